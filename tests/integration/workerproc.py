"""Real `orchestrator worker` subprocesses for the distributed tests.

    worker_env(...)          the environment a test worker runs with (short lease, fast reaper)
    WorkerProcess            one worker subprocess: pid, kill (SIGKILL), terminate (SIGTERM), log
    WorkerPool               starts workers, waits until they heartbeat, stops them all
    drop_arq_keys(client)    teardown: arq's job/result keys (outside our prefix) of every run

Workers are started exactly as an operator would (`python -m orchestrator.cli worker ...`)
and configured only through their command line and ORCHESTRATOR_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)

from orchestrator.client import Client
from orchestrator.store.connection import Redis
from tests.fixtures_redis import run_job_ids

AGENTS_MODULE = "tests.integration.agents_for_tests"
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Short enough that crash recovery fits in a test, long enough for a noisy 2-core machine.
TEST_WORKER_SETTINGS = {
    "ORCHESTRATOR_LEASE_TTL_S": "3",
    "ORCHESTRATOR_REAP_INTERVAL_S": "0.5",
    "ORCHESTRATOR_SHUTDOWN_GRACE_S": "1",
    "ORCHESTRATOR_HEARTBEAT_S": "0.5",
}


def worker_env(llm_url: str, tool_log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env.update(TEST_WORKER_SETTINGS)
    env["TEST_LLM_URL"] = llm_url
    env["TEST_TOOL_LOG"] = str(tool_log)
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker gets no chance to clean up (a crash, an OOM kill)."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM: a graceful shutdown request (what Kubernetes sends first)."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code, once the process has exited (TimeoutError if it does not)."""
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"worker {self.pid} still running after {timeout}s") from None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def owns(self, worker_id: str | None) -> bool:
        """Whether a run record's `worker_id` (`host:pid:rand`) names this process."""
        return worker_id is not None and worker_id.split(":")[-2] == str(self.pid)


class WorkerPool:
    """Starts worker subprocesses on one Redis prefix; `stop_all()` at teardown."""

    def __init__(
        self,
        client: Client,
        redis_url: str,
        prefix: str,
        env: dict[str, str],
        log_dir: Path,
        *,
        agents: str = AGENTS_MODULE,
    ) -> None:
        self._agents = agents
        self._client = client
        self._redis_url = redis_url
        self._prefix = prefix
        self._env = env
        self._log_dir = log_dir
        self.started: list[WorkerProcess] = []

    async def start(
        self, count: int = 1, *, timeout: float = 15.0, concurrency: int = 4
    ) -> list[WorkerProcess]:
        """Start `count` workers and return once every one of them heartbeats."""
        procs = [self._spawn(concurrency) for _ in range(count)]
        await self.wait_registered(procs, timeout=timeout)
        return procs

    def spawn(self, concurrency: int = 4) -> WorkerProcess:
        """Start one worker without waiting for it to heartbeat."""
        return self._spawn(concurrency)

    def _spawn(self, concurrency: int) -> WorkerProcess:
        index = len(self.started)
        log_path = self._log_dir / f"worker-{index}.log"
        command = [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "worker",
            "--redis",
            self._redis_url,
            "--prefix",
            self._prefix,
            "--agents",
            self._agents,
            "--concurrency",
            str(concurrency),
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command,
                env=self._env,
                cwd=PROJECT_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(proc, log_path)
        self.started.append(worker)
        return worker

    async def wait_registered(self, procs: list[WorkerProcess], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        wanted = {p.pid for p in procs}
        while True:
            live = {int(w.get("pid", -1)) for w in await self._client.workers.list()}
            if wanted <= live:
                return
            dead = [p for p in procs if not p.alive]
            if dead:
                raise RuntimeError(f"worker {dead[0].pid} exited at startup:\n{dead[0].log()}")
            if time.monotonic() > deadline:
                logs = "\n".join(p.log() for p in procs)
                raise TimeoutError(f"workers {sorted(wanted - live)} never heartbeat:\n{logs}")
            await asyncio.sleep(0.1)

    def owner_of(self, worker_id: str | None) -> WorkerProcess:
        for worker in self.started:
            if worker.owns(worker_id):
                return worker
        raise LookupError(f"no started worker has id {worker_id!r}")

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.pid} ---\n{w.log()}" for w in self.started)

    async def stop_all(self) -> None:
        for worker in self.started:
            worker.terminate()
        deadline = time.monotonic() + 5.0
        for worker in self.started:
            with contextlib.suppress(TimeoutError):
                await worker.wait_exit(max(0.0, deadline - time.monotonic()))
            worker.kill()


_ARQ_PREFIXES = (job_key_prefix, result_key_prefix, in_progress_key_prefix, retry_key_prefix)


async def drop_job_keys(redis: Redis, job_ids: list[str]) -> None:
    """Delete arq's keys of these jobs (arq keeps them outside our key prefix)."""
    names = [prefix + jid for jid in job_ids for prefix in _ARQ_PREFIXES]
    for start in range(0, len(names), 500):
        await redis.delete(*names[start : start + 500])


async def drop_arq_keys(client: Client) -> None:
    """Delete arq's keys of every run and fork the test made: each attempt and each
    resumed segment."""
    runs = await client.runs.list(include_forks=True, limit=1000)
    await drop_job_keys(
        client.redis,
        [
            jid
            for r in runs
            for jid in run_job_ids(r.run_id, max(r.attempt, r.max_attempts), r.segment)
        ],
    )
