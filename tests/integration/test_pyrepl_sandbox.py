"""PyRepl's sandbox over real processes: persistence, streaming, every limit, isolation.

Each test drives `PyRepl` as a tool would be driven (`execute`, `reset`, `inspect`) and
checks what a user relies on: what the code can and cannot do, and the error the model
reads when it hits a limit. These need root (namespaces, a dedicated uid); the machine's
own tests run as root, and the unisolated mode has a test of its own.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import SandboxLimitError
from orchestrator.ports import ToolSession
from orchestrator.pyrepl import PyRepl, SandboxLimits, SandboxPolicy
from orchestrator.runtime.journal import InMemorySessionJournal
from orchestrator.runtime.tools import ToolRuntime

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="the isolated sandbox needs root"),
]

TIGHT = SandboxLimits(wall_s=20, cpu_s=2, memory_mb=256, output_bytes=64 << 10, disk_mb=8)


class Recorder:
    """An event emitter that notes when each event arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, Any]] = []

    def emit(self, name: str, data: Any = None) -> None:
        self.events.append((time.monotonic(), name, data))

    def text(self, name: str = "kernel_stdout") -> str:
        return "".join(d["text"] for _, n, d in self.events if n == name)


@pytest.fixture
async def repl() -> AsyncIterator[PyRepl]:
    made = PyRepl(TIGHT)
    try:
        yield made
    finally:
        await made.close()


def session(session_id: str, journal: InMemorySessionJournal, fork: str | None = None) -> Any:
    """The `runtime` a worker gives a tool call in `session_id`."""
    return ToolRuntime(
        session=ToolSession(session_id=session_id, run_id="r1", fork_id=fork, journal=journal)
    )


async def limit_of(repl: PyRepl, code: str, **kw: Any) -> SandboxLimitError:
    with pytest.raises(SandboxLimitError) as caught:
        await repl.execute(code, **kw)
    return caught.value


# -- persistence ---------------------------------------------------------------------------


async def test_variables_persist_between_calls_of_one_session(repl: PyRepl) -> None:
    first = await repl.execute("import math\ntotal = sum(range(10))\ndef twice(v): return 2 * v")
    second = await repl.execute("twice(total) + math.floor(2.5)")
    assert first["success"]
    assert second["success"]
    assert second["return_value"] == "92"
    assert first["sandbox"]["isolation"] == "isolated"


async def test_variables_do_not_cross_sessions(repl: PyRepl) -> None:
    # A worker gives each session its own journal (keys scoped to the session).
    journal_a, journal_b = InMemorySessionJournal(), InMemorySessionJournal()
    await repl.execute("secret = 'session-a'", runtime=session("a", journal_a))
    other = await repl.execute("'secret' in dir()", runtime=session("b", journal_b))
    same = await repl.execute("secret", runtime=session("a", journal_a))
    assert other["return_value"] == "False"
    assert same["return_value"] == "'session-a'"
    assert repl.interpreters == 2


async def test_a_fork_gets_an_interpreter_of_its_own(repl: PyRepl) -> None:
    journal = InMemorySessionJournal()
    await repl.execute("x = 1", runtime=session("s", journal))
    in_fork = await repl.execute("'x' in dir()", runtime=session("s", journal, fork="fork_1"))
    assert in_fork["return_value"] == "False"


async def test_reset_clears_variables_and_files(repl: PyRepl) -> None:
    await repl.execute("x = 1\nopen('notes.txt', 'w').write('hello')")
    await repl.reset()
    after = await repl.execute("import os\n('x' in dir(), os.listdir('.'))")
    assert after["return_value"] == "(False, [])"


async def test_inspect_lists_variables_and_the_sandbox(repl: PyRepl) -> None:
    await repl.execute("rows = [1, 2, 3]\nname = 'demo'")
    report = await repl.inspect()
    variables = {v["name"]: v for v in report["variables"]}
    assert variables["rows"]["type"] == "list"
    assert variables["rows"]["repr"] == "[1, 2, 3]"
    assert variables["name"]["repr"] == "'demo'"
    assert report["sandbox"]["mode"] == "isolated"
    assert report["journal"] == {"inputs": 1, "complete": True}


async def test_an_exception_is_a_result_with_the_line_and_traceback(repl: PyRepl) -> None:
    result = await repl.execute("a = 1\nb = a / 0")
    assert result["success"] is False
    assert result["error"] == "ZeroDivisionError: division by zero"
    assert result["error_details"]["line"] == 2
    assert result["error_details"]["snippet"] == "b = a / 0"
    assert "a / 0" in result["error_details"]["traceback"]
    assert (await repl.execute("a"))["return_value"] == "1"  # what ran before the error stays


async def test_syntax_errors_name_the_line(repl: PyRepl) -> None:
    result = await repl.execute("x = 1\nif x\n  pass")
    assert result["success"] is False
    assert result["error_details"]["type"] == "SyntaxError"
    assert result["error_details"]["line"] == 2


# -- streaming -----------------------------------------------------------------------------


async def test_stdout_streams_as_events_before_the_call_ends(repl: PyRepl) -> None:
    events = Recorder()
    code = "import time, sys\nprint('step 1')\ntime.sleep(1.5)\nprint('step 2', file=sys.stderr)"
    result = await repl.execute(code, event_emitter=events)
    ended = time.monotonic()
    first = next(t for t, name, _ in events.events if name == "kernel_stdout")
    assert ended - first >= 1.0, "step 1 arrived only when the call ended"
    assert events.text() == "step 1\n"
    assert events.text("kernel_stderr") == "step 2\n"
    assert result["stdout"] == "step 1\n"
    assert result["stderr"] == "step 2\n"


async def test_output_of_subprocesses_streams_too(repl: PyRepl) -> None:
    events = Recorder()
    result = await repl.execute(
        "import subprocess\nsubprocess.run(['echo', 'from a child'])", event_emitter=events
    )
    assert events.text() == "from a child\n"
    assert "from a child" in result["stdout"]


# -- limits --------------------------------------------------------------------------------


async def test_a_call_over_its_wall_clock_is_stopped_and_variables_survive(repl: PyRepl) -> None:
    await repl.execute("kept = 7")
    error = await limit_of(repl, "import time\ntime.sleep(60)", timeout_seconds=1)
    assert error.limit == "wall"
    assert "wall-clock limit" in str(error)
    assert "1 s" in str(error)
    assert (await repl.execute("kept"))["return_value"] == "7"


async def test_code_that_ignores_interrupts_is_killed_and_restored_from_the_journal(
    repl: PyRepl,
) -> None:
    await repl.execute("kept = 'before'")
    error = await limit_of(
        repl,
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        timeout_seconds=1,
    )
    assert error.limit == "wall"
    assert "restarted" in str(error)
    after = await repl.execute("kept")
    assert after["return_value"] == "'before'"
    assert after["replayed"] == 1
    assert "re-created" in after["note"]


async def test_a_busy_loop_is_stopped_at_its_cpu_time(repl: PyRepl) -> None:
    error = await limit_of(repl, "while True:\n    pass")
    assert error.limit == "cpu"
    assert "CPU-time limit" in str(error)
    assert "2 s" in str(error)
    assert (await repl.execute("1 + 1"))["return_value"] == "2"


async def test_allocating_without_bound_is_a_memory_error(repl: PyRepl) -> None:
    error = await limit_of(repl, "hog = []\nwhile True:\n    hog.append(bytearray(16 << 20))")
    assert error.limit == "memory"
    assert "memory limit" in str(error)
    assert "256 MiB" in str(error)
    assert (await repl.execute("del hog\n'fine'"))["return_value"] == "'fine'"


async def test_printing_without_bound_is_stopped_at_the_output_limit(repl: PyRepl) -> None:
    events = Recorder()
    error = await limit_of(repl, "while True:\n    print('x' * 1000)", event_emitter=events)
    assert error.limit == "output"
    assert "output limit" in str(error)
    streamed = len(events.text().encode())
    assert streamed <= TIGHT.output_bytes
    assert len(events.events) < 100, "output was not coalesced into few events"
    assert (await repl.execute("'still here'"))["return_value"] == "'still here'"


async def test_a_fork_bomb_is_stopped_and_leaves_no_process_behind(repl: PyRepl) -> None:
    ticks = 0

    async def ticking() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    ticker = asyncio.create_task(ticking())
    try:
        error = await limit_of(repl, "import os\nwhile True:\n    os.fork()")
    finally:
        ticker.cancel()
    assert error.limit == "processes"
    assert "process limit" in str(error)
    assert ticks > 0, "the event loop stalled during the fork bomb"
    report = await repl.inspect()
    uid = int(report["sandbox"]["user"].split()[1].rstrip(","))
    counts = [line for line in _ps_uid(uid)]
    assert len(counts) == 1, f"processes left behind: {counts}"  # the interpreter only


async def test_processes_a_call_starts_do_not_outlive_it(repl: PyRepl) -> None:
    started = await repl.execute(
        "import subprocess\nchild = subprocess.Popen(['sleep', '600'])\nchild.pid"
    )
    assert started["success"]
    report = await repl.inspect()
    uid = int(report["sandbox"]["user"].split()[1].rstrip(","))
    assert len(_ps_uid(uid)) == 1  # the interpreter; the sleep was stopped with the call
    after = await repl.execute("child.poll() is not None")
    assert after["return_value"] == "True"


async def test_sessions_run_as_different_users(repl: PyRepl) -> None:
    uids = {
        (
            await repl.execute(
                "import os\nos.getuid()", runtime=session(s, InMemorySessionJournal())
            )
        )["return_value"]
        for s in ("a", "b")
    }
    assert len(uids) == 2


def _ps_uid(uid: int) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nUid:\t{uid}\t" in status:
                found.append(entry.name)
    return found


async def test_filling_the_working_directory_is_a_disk_error(repl: PyRepl) -> None:
    error = await limit_of(
        repl,
        "with open('big', 'wb') as f:\n    for _ in range(64):\n        f.write(bytes(1 << 20))",
    )
    assert error.limit == "disk"
    assert "disk limit" in str(error)


# -- isolation -----------------------------------------------------------------------------


async def test_the_code_has_no_network(repl: PyRepl, redis_url: str) -> None:
    code = (
        "import socket\n"
        "def attempt(host, port):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close()\n"
        "        return 'connected'\n"
        "    except OSError as exc:\n"
        "        return type(exc).__name__\n"
        "[attempt('127.0.0.1', 6379), attempt('1.1.1.1', 53), attempt('localhost', 22)]"
    )
    result = await repl.execute(code)
    assert "connected" not in result["return_value"], result
    interfaces = await repl.execute("import socket\n[n for _, n in socket.if_nameindex()]")
    assert interfaces["return_value"] == "['lo']"


HERE = Path(__file__).resolve()


def _host_tmp_ok_is_ours() -> bool:
    path = Path("/tmp/ok")
    return path.exists() and path.read_text() == "x"


async def test_the_code_cannot_write_outside_its_directory(repl: PyRepl, tmp_path: Path) -> None:
    here = HERE
    targets = ["/etc/pyrepl-test", str(here.parent / "pyrepl-test"), "/var/tmp/x", "/dev/shm/x"]
    code = (
        "import errno\n"
        "def attempt(path):\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        return 'written'\n"
        "    except OSError as exc:\n"
        "        return errno.errorcode[exc.errno]\n"
        f"results = {{p: attempt(p) for p in {targets!r}}}\n"
        "results['/tmp/ok'] = attempt('/tmp/ok')\n"
        "results"
    )
    result = await repl.execute(code)
    outcome = eval(result["return_value"])
    assert outcome["/tmp/ok"] == "written"
    # ENOENT: the project lives under /tmp (a CI clone), which the sandbox replaces.
    assert all(outcome[p] in ("EROFS", "EACCES", "ENOENT") for p in targets), outcome
    assert not (here.parent / "pyrepl-test").exists()
    # Its /tmp is its own: the host's /tmp is not visible, and nothing it writes lands there.
    (tmp_path / "host-file").write_text("host")
    listing = await repl.execute(f"import os\nos.path.exists({str(tmp_path)!r})")
    assert listing["return_value"] == "False"
    assert not _host_tmp_ok_is_ours()


async def test_the_code_sees_no_secrets_of_the_worker(
    repl: PyRepl, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", "redis://:secret@127.0.0.1/0")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    code = (
        "import os\n"
        "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
        "def readable(path):\n"
        "    try:\n"
        "        open(path).read()\n"
        "        return True\n"
        "    except OSError:\n"
        "        return False\n"
        "(sorted(os.environ), os.getuid(), pids[:2], readable('/proc/1/environ'),"
        " os.path.exists('/root/.bashrc'))"
    )
    result = await repl.execute(code)
    env, uid, pids, init_environ, root_home = eval(result["return_value"])
    assert not [k for k in env if "ORCHESTRATOR" in k or "KEY" in k], env
    assert uid >= 1_000_000
    assert pids == [1, 2], "the code sees processes outside its sandbox"
    assert init_environ is False
    assert root_home is False


async def test_the_code_cannot_regain_root(repl: PyRepl) -> None:
    code = (
        "import os\n"
        "try:\n"
        "    os.setuid(0)\n"
        "    outcome = 'root'\n"
        "except PermissionError:\n"
        "    outcome = 'refused'\n"
        "outcome"
    )
    assert (await repl.execute(code))["return_value"] == "'refused'"


async def test_unisolated_mode_says_so_in_every_result() -> None:
    repl = PyRepl(TIGHT, SandboxPolicy(isolate="off"))
    try:
        result = await repl.execute("import os\nos.getuid()")
        report = await repl.inspect()
    finally:
        await repl.close()
    assert result["sandbox"]["isolation"] == "NONE"
    assert "worker's user" in result["sandbox"]["warning"]
    assert result["return_value"] == str(os.getuid())
    assert report["sandbox"]["mode"] == "none"


# -- in a session across "workers" (two PyRepls sharing one journal) ----------------------


async def test_another_pyrepl_rebuilds_the_session_from_the_journal(repl: PyRepl) -> None:
    journal = InMemorySessionJournal()
    other = PyRepl(TIGHT)
    try:
        await repl.execute(
            "x = 41\nfiles = open('f', 'w').write('data')", runtime=session("s", journal)
        )
        rebuilt = await other.execute("x + 1, open('f').read()", runtime=session("s", journal))
        assert rebuilt["return_value"] == "(42, 'data')"
        assert rebuilt["replayed"] == 1
        assert "re-created" in rebuilt["note"]
        await other.execute("x = 100", runtime=session("s", journal))
        # Back on the first: it is behind, and catches up with the two inputs it missed.
        caught_up = await repl.execute("x", runtime=session("s", journal))
        assert caught_up["return_value"] == "100"
        assert caught_up["replayed"] == 2
        assert "up to date" in caught_up["note"]
    finally:
        await other.close()


async def test_a_journal_over_its_bounds_means_the_state_is_lost_and_said_so(
    repl: PyRepl,
) -> None:
    from orchestrator.ports import JournalLimits

    journal = InMemorySessionJournal(JournalLimits(max_entries=2))
    other = PyRepl(TIGHT)
    try:
        for i in range(3):
            await repl.execute(f"v{i} = {i}", runtime=session("s", journal))
        lost = await other.execute("'v0' in dir()", runtime=session("s", journal))
    finally:
        await other.close()
    assert lost["return_value"] == "False"
    assert lost["note"].startswith("STATE LOST")
