"""Many machines: Redis, two workers and the client each on a host of their own (Linux
network namespaces joined by a bridge; `netns.NetnsLab`). A run forks 20 sub-agents; the
forks spread over both worker hosts; the client tails the whole tree from its host; one
worker host dies mid-run (its processes SIGKILLed, its namespace deleted) and every run
still ends, with every event exactly once in what the client saw.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
Prints the spread of forks and the time from the host's death to the last run's end.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.netns import Host, NetnsLab, netns_unavailable, remove_stale
from tests.integration.redisproc import REDIS_SERVER
from tests.integration.workerproc import AGENTS_MODULE, PROJECT_ROOT, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FORKER = f"{AGENTS_MODULE}:forker"
FORKS = 20
PREFIX = "multihost"
LLM_PORT = 8765


def _spawn(message: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": message}}


SCRIPT: dict[str, Any] = {
    "model": "scripted",
    "rules": [
        {
            "name": "leaf-work",
            "match": {"last_user_contains": "task: leaf", "last_role": "user"},
            "reply": {
                "content": "Working on my part.",
                "tool_calls": [{"name": "slow_tool", "arguments": {"seconds": 3}}],
            },
        },
        {
            "name": "leaf-answer",
            "match": {"last_user_contains": "task: leaf", "last_role": "tool"},
            "reply": {"content": "part done: {last_tool_result}"},
        },
        {
            "name": "root-split",
            "match": {"last_user_contains": "split twenty", "last_role": "user"},
            "reply": {
                "content": "Splitting the work.",
                "tool_calls": [
                    *(_spawn(f"leaf {i}") for i in range(FORKS)),
                    {"name": "selfref_fork_gather_all", "arguments": {}},
                ],
            },
        },
        {
            "name": "root-answer",
            "match": {"last_user_contains": "split twenty", "last_role": "tool"},
            "reply": {"content": "All parts gathered."},
        },
    ],
    "fallback": {"content": "unexpected"},
}


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"multi-host test needs network namespaces: {reason}")
    if REDIS_SERVER is None or shutil.which("redis-cli") is None:
        pytest.skip("no redis-server / redis-cli to run Redis on its own host")
    remove_stale()
    made = NetnsLab.create(4)  # redis, worker A, worker B, client (+ the scripted model)
    try:
        yield made
    finally:
        made.close()


def _wait_redis(lab: NetnsLab, host: Host, timeout: float = 15.0) -> None:
    assert shutil.which("ip") is not None
    deadline = time.monotonic() + timeout
    command = ["ip", "netns", "exec", host.name, "redis-cli", "-h", host.address, "ping"]
    while True:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        if "PONG" in done.stdout:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis on {host.address} never answered: {done.stderr}")
        time.sleep(0.1)


async def _lines(proc: subprocess.Popen[bytes]) -> Any:
    assert proc.stdout is not None
    while True:
        raw = await asyncio.to_thread(proc.stdout.readline)
        if not raw:
            return
        yield json.loads(raw)


def _host_of(worker_id: str | None) -> str | None:
    return None if worker_id is None else worker_id.split(":")[0]


def _start_hosts(lab: NetnsLab, tmp_path: Path) -> subprocess.Popen[bytes]:
    """Redis on host 1, a worker on hosts 2 and 3, the scripted model and the client
    on host 4. Returns the client (its stdout: JSON lines)."""
    redis_host, host_a, host_b, client_host = lab.hosts
    redis_url = f"redis://{redis_host.address}:6379/0"
    assert REDIS_SERVER is not None
    (tmp_path / "redis").mkdir()
    redis_argv = [REDIS_SERVER, "--bind", redis_host.address, "--port", "6379"]
    redis_argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
    redis_argv += ["--dir", str(tmp_path / "redis")]
    lab.spawn(redis_host, redis_argv, env={}, log=tmp_path / "redis.log")
    _wait_redis(lab, redis_host)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    env = worker_env(f"http://{client_host.address}:{LLM_PORT}/v1", tmp_path / "tools.log")
    cli = [sys.executable, "-m", "orchestrator.cli"]
    model = [*cli, "mock-llm", "--host", client_host.address, "--port", str(LLM_PORT)]
    lab.spawn(
        client_host,
        [*model, "--script", str(script)],
        env=env,
        log=tmp_path / "mock-llm.log",
        cwd=PROJECT_ROOT,
    )
    for host, name in ((host_a, "host-a"), (host_b, "host-b")):
        worker = [*cli, "worker", "--redis", redis_url, "--prefix", PREFIX]
        lab.spawn(
            host,
            [*worker, "--agents", AGENTS_MODULE, "--concurrency", "6"],
            env={**env, "ORCHESTRATOR_WORKER_HOST": name},
            log=tmp_path / f"worker-{name}.log",
            cwd=PROJECT_ROOT,
        )
    client = [sys.executable, "-m", "tests.integration.netns_client", "--redis", redis_url]
    client += ["--prefix", PREFIX, "--agent", FORKER, "--message", "split twenty ways"]
    client += ["--wait-workers", "2", "--timeout", "120"]
    return lab.spawn(
        client_host,
        client,
        env=env,
        log=tmp_path / "client.log",
        cwd=PROJECT_ROOT,
        stdout_pipe=True,
    )


@dataclass
class Watch:
    """What the test saw from the client host's output."""

    worker_hosts: list[str] = field(default_factory=list)
    fork_hosts: dict[str, list[str]] = field(default_factory=dict)  # fork -> hosts, in order
    entries: list[dict[str, Any]] = field(default_factory=list)
    final: list[list[Any]] = field(default_factory=list)
    killed_at: float | None = None

    def runs(self, runs: list[list[Any]]) -> Counter[str | None]:
        """Note where forks run; how many run on each host right now."""
        running: Counter[str | None] = Counter()
        for run_id, status, worker_id, _ in runs:
            if ".fork_" not in run_id or status != "running" or not worker_id:
                continue
            host = _host_of(worker_id)
            running[host] += 1
            seen = self.fork_hosts.setdefault(run_id, [])
            if host not in seen:
                seen.append(str(host))
        return running


async def _watch(lab: NetnsLab, client: subprocess.Popen[bytes], victim: Host) -> Watch:
    """Follow the client; kill `victim` once both worker hosts run 3+ forks each."""
    watch = Watch()
    async for line in _lines(client):
        kind = line["type"]
        if kind == "workers":
            watch.worker_hosts = line["hosts"]
        elif kind == "entry":
            watch.entries.append(line)
        elif kind == "runs":
            running = watch.runs(line["runs"])
            if watch.killed_at is None and min(running["host-a"], running["host-b"]) >= 3:
                lab.kill_host(victim)  # mid-run: forks are running there right now
                watch.killed_at = time.monotonic()
        elif kind in ("done", "timeout"):
            watch.final = line["runs"]
            break
    return watch


async def test_forks_spread_over_two_worker_hosts_and_survive_one_host_dying(
    lab: NetnsLab, tmp_path: Path
) -> None:
    client = _start_hosts(lab, tmp_path)
    async with asyncio.timeout(150):
        watch = await _watch(lab, client, victim=lab.hosts[2])
    ended_after_kill = time.monotonic() - (watch.killed_at or time.monotonic())
    assert client.wait(30) == 0, _logs(tmp_path)
    assert client.stdout is not None
    client.stdout.close()
    assert watch.worker_hosts == ["host-a", "host-b"]
    assert watch.killed_at is not None, f"forks never ran on both hosts:\n{_logs(tmp_path)}"

    # Every run ended, and completed: the root and its 20 forks.
    final = watch.final
    assert len(final) == FORKS + 1
    assert {status for _, status, _, _ in final} == {"completed"}, final
    # The forks spread over both worker hosts.
    spread = Counter(hosts[0] for hosts in watch.fork_hosts.values())  # where each started
    assert spread["host-a"] > 0
    assert spread["host-b"] > 0
    assert sum(spread.values()) == FORKS
    # Forks that were running on the dead host were resumed (a later attempt) elsewhere.
    resumed = [run_id for run_id, _, worker_id, attempt in final if attempt > 1]
    assert resumed, final
    assert all(_host_of(w) == "host-a" for r, _, w, _ in final if r in resumed)
    # The client tailed the whole tree: every run's end, every event exactly once.
    entries = watch.entries
    ended = {e["run"] for e in entries if e.get("status") == "completed"}
    assert ended == {run_id for run_id, *_ in final}
    seqs = Counter((e["call"], e["seq"]) for e in entries if "seq" in e)
    assert not [key for key, n in seqs.items() if n > 1]
    for call in {call for call, _ in seqs}:
        numbers = sorted(seq for c, seq in seqs if c == call)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), (call, numbers)
    print(
        f"\nmulti-host: of {FORKS} forks {spread['host-a']} started on host-a, "
        f"{spread['host-b']} on host-b; host-b killed mid-run, {len(resumed)} forks resumed "
        f"on host-a; every run ended {ended_after_kill:.1f}s after the kill; the client "
        f"tailed {len(entries)} entries, each event once"
    )


def _logs(tmp_path: Path) -> str:
    return "\n".join(
        f"--- {p.name} ---\n{p.read_text(errors='replace')[-3000:]}"
        for p in sorted(tmp_path.glob("*.log"))
    )
