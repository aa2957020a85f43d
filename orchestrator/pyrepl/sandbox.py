"""`Sandbox`: one sandboxed interpreter process, driven from the worker's event loop.

The process runs `child.py` (see its docstring for the isolation). Four pipes connect it:

    commands   worker -> child   JSON lines: execute, inspect, interrupt, reply, shutdown
    protocol   child -> worker   JSON lines: ready, result, call, inspected, exit, error
    stdout     child -> worker   the code's raw output, streamed as it comes
    stderr     child -> worker

Everything read from the child is untrusted: messages are size-bounded, validated, and
anything unexpected is ignored (or, for an oversized message, ends the sandbox). Nothing
the child says can make the worker do more than the code could do through `runtime`.

Limits the worker enforces itself: the wall clock (interrupt, then kill after a grace
period), the output of a call (the same), and the CPU time of a call (RLIMIT_CPU on the
interpreter, set from outside before each call; a root worker can raise it again for the
next call, the code cannot).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from orchestrator.errors import SandboxError
from orchestrator.pyrepl.limits import SandboxLimits, SandboxPolicy

__all__ = ["CellOutcome", "OutputSink", "PrimitiveHandler", "Sandbox"]

_log = structlog.get_logger(__name__)

CHILD_PROGRAM = str(Path(__file__).with_name("child.py"))
PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 << 20
_FLUSH_S = 0.05
_FLUSH_BYTES = 16 << 10
_CPU_POLL_S = 0.1
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
}

# (stream name, text) of output as it comes; called on the event loop.
OutputSink = Callable[[str, str], None]
# A `call` message of the code (a runtime primitive) -> the reply message's fields.
PrimitiveHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_EOF: dict[str, Any] = {"type": "_eof"}
_WAKE: dict[str, Any] = {"type": "_wake"}


@dataclass
class CellOutcome:
    """How one call ended.

    stopped: None (ran to its end, `ok` says whether it raised), or the limit or event
    that stopped it: "wall", "cpu", "memory", "output", "processes", "disk", "interrupt",
    "suspended", "aborted", "died" (the interpreter is gone: `died` is True).
    """

    ok: bool
    value: str | None = None
    error: dict[str, Any] | None = None
    stopped: str | None = None
    died: bool = False
    stdout: str = ""
    stderr: str = ""
    output_bytes: int = 0
    elapsed_s: float = 0.0
    exit: dict[str, Any] | None = None


@dataclass
class _Cell:
    """The call in progress: its output, and what has been done to stop it."""

    id: str
    sink: OutputSink | None
    cap: int
    started: float = field(default_factory=time.monotonic)
    stopped: str | None = None
    kill_at: float | None = None
    cpu_budget: float = math.inf
    cpu_mark: float = 0.0
    output_bytes: int = 0
    kept: dict[str, list[str]] = field(default_factory=lambda: {"stdout": [], "stderr": []})
    pending: dict[str, list[str]] = field(default_factory=lambda: {"stdout": [], "stderr": []})
    pending_bytes: int = 0
    decoders: dict[str, Any] = field(
        default_factory=lambda: {
            "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
            "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
        }
    )

    def take(self, stream: str, data: bytes) -> bool:
        """Keep and queue output up to the cap; True when this chunk went over it."""
        room = self.cap - self.output_bytes
        self.output_bytes += len(data)
        if room <= 0:
            return False
        text = self.decoders[stream].decode(data[:room])
        if text:
            self.kept[stream].append(text)
            self.pending[stream].append(text)
            self.pending_bytes += len(text)
        return self.output_bytes > self.cap

    def flush(self) -> None:
        for stream, parts in self.pending.items():
            if parts and self.sink is not None:
                self.sink(stream, "".join(parts))
            parts.clear()
        self.pending_bytes = 0

    def text(self, stream: str) -> str:
        tail: str = self.decoders[stream].decode(b"", final=True)
        return "".join(self.kept[stream]) + tail


class Sandbox:
    """One interpreter in its sandbox. Build it with `await Sandbox.start(...)`."""

    def __init__(self, policy: SandboxPolicy, limits: SandboxLimits) -> None:
        self.policy = policy
        self.limits = limits
        self.isolation: dict[str, Any] = {}
        self.cwd = ""
        self.started_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._proc: asyncio.subprocess.Process | None = None
        self._workdir: str | None = None
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._commands: asyncio.WriteTransport | None = None
        self._raw: dict[int, str] = {}
        self._exited = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._cell: _Cell | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._settling: asyncio.Task[None] | None = None
        self._interpreter_pid: int | None = None
        self._exit_report: dict[str, Any] | None = None
        self._dead = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def start(cls, policy: SandboxPolicy, limits: SandboxLimits) -> Sandbox:
        """Start an interpreter and wait until it is ready (SandboxError if it cannot)."""
        sandbox = cls(policy, limits)
        try:
            await sandbox._spawn()
            async with asyncio.timeout(policy.start_timeout_s):
                await sandbox._await_ready()
        except TimeoutError:
            sandbox.kill()
            await sandbox.close()
            raise SandboxError(
                f"the sandbox did not start within {policy.start_timeout_s:g} s"
            ) from None
        except BaseException:
            sandbox.kill()
            await sandbox.close()
            raise
        return sandbox

    async def _spawn(self) -> None:
        if self.policy.isolate != "required":  # where an unisolated interpreter works
            self._workdir = tempfile.mkdtemp(prefix="orchestrator-pyrepl-")
        proto_r, proto_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        config = {
            "proto_fd": proto_w,
            "parent_pid": os.getpid(),
            "isolate": self.policy.isolate,
            "uid_base": self.policy.uid_base,
            "hide": list(self.policy.hide),
            "expose": _python_prefixes(),
            "tmp_bytes": self.limits.disk_mb << 20,
            "workdir": self._workdir or "/",
            "max_repr": 10_000,
            "limits": {
                "memory_bytes": self.limits.memory_mb << 20,
                "file_bytes": self.limits.file_mb << 20,
                "open_files": self.limits.open_files,
                "processes": self.limits.processes,
                "lifetime_cpu_s": math.ceil(self.limits.lifetime_cpu_s),
            },
        }
        home = self._workdir or "/tmp"  # isolated: its own /tmp
        env = dict(_ENV, HOME=home, TMPDIR=home)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.policy.executable,
                "-I",
                "-B",
                "-u",
                "-X",
                "utf8",
                CHILD_PROGRAM,
                json.dumps(config),
                stdin=cmd_r,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(proto_w,),
                env=env,
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (proto_r, out_r, err_r, cmd_w):
                os.close(fd)
            raise SandboxError(f"cannot start the sandbox's interpreter: {exc}") from exc
        finally:
            for fd in (cmd_r, out_w, err_w, proto_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
        await self._loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(proto_r, "rb", 0)
        )
        self._commands, _ = await self._loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(cmd_w, "wb", 0)
        )
        for fd, stream in ((out_r, "stdout"), (err_r, "stderr")):
            os.set_blocking(fd, False)
            self._raw[fd] = stream
            self._loop.add_reader(fd, self._on_raw, fd)
        self._pump = self._loop.create_task(self._read_messages(reader))
        self._waiter = self._loop.create_task(self._wait_exit())

    async def _await_ready(self) -> None:
        while True:
            message = await self._messages.get()
            kind = message.get("type")
            if kind == "ready":
                break
            if kind == "error":
                raise SandboxError(f"the sandbox could not start: {message.get('message')}")
            if message is _EOF:
                raise SandboxError(
                    f"the sandbox's interpreter exited at start ({self._exit_text()})"
                )
        if message.get("v") != PROTOCOL_VERSION:
            raise SandboxError(f"the sandbox speaks protocol {message.get('v')!r}, not 1")
        isolation = message.get("isolation")
        self.isolation = isolation if isinstance(isolation, dict) else {"mode": "unknown"}
        self.cwd = str(message.get("cwd") or "")
        self._interpreter_pid = self._find_interpreter()

    def _find_interpreter(self) -> int:
        """The interpreter's pid as this worker sees it: the sandbox process itself, or
        (isolated) the grandchild that runs inside the namespaces."""
        assert self._proc is not None
        pid = self._proc.pid
        if not self.isolated:
            return pid
        for _ in range(2):
            children = _children(pid)
            if not children:
                raise SandboxError("cannot find the sandbox's interpreter process")
            pid = children[0]
        return pid

    @property
    def isolated(self) -> bool:
        return self.isolation.get("mode") == "isolated"

    @property
    def alive(self) -> bool:
        return not self._dead and self._proc is not None and not self._exited.is_set()

    @property
    def pid(self) -> int | None:
        """The sandbox process (killing its process group stops everything in it)."""
        return None if self._proc is None else self._proc.pid

    @property
    def interpreter_pid(self) -> int | None:
        return self._interpreter_pid

    def kill(self) -> None:
        """Stop every process of the sandbox now (its state is lost)."""
        self._dead = True
        if self._proc is not None and not self._exited.is_set():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Shut the interpreter down (killing it if it does not go) and free everything."""
        if self._settling is not None:
            self._settling.cancel()
            await asyncio.gather(self._settling, return_exceptions=True)
        if self.alive:
            self._write({"type": "shutdown"})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._exited.wait()
        self.kill()
        if self._proc is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._exited.wait()
        tasks = [t for t in (self._pump, self._waiter) if t is not None]
        self._release()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _release(self) -> None:
        for fd in list(self._raw):
            self._loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._raw.clear()
        if self._commands is not None:
            self._commands.close()
            self._commands = None
        for task in (self._pump, self._waiter):
            if task is not None:
                task.cancel()
        if self._flusher is not None:
            self._flusher.cancel()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- reading the child -------------------------------------------------------------------

    async def _read_messages(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    _log.warning("pyrepl.message_too_large", limit=MAX_MESSAGE_BYTES)
                    self.kill()
                    break
                if not line:
                    break
                message = _parse(line)
                if message is None:
                    continue
                if message.get("type") == "exit":
                    self._exit_report = message
                    continue
                self._messages.put_nowait(message)
        finally:
            self._messages.put_nowait(_EOF)

    def _on_raw(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._loop.remove_reader(fd)
            return
        self._take(self._raw[fd], data)

    def _take(self, stream: str, data: bytes) -> None:
        cell = self._cell
        if cell is None:
            return  # output between calls (a background thread): nobody to show it to
        if cell.take(stream, data) and cell.stopped is None:
            self._stop(cell, "output")
        if cell.pending_bytes >= _FLUSH_BYTES:
            cell.flush()
        elif cell.pending_bytes and self._flusher is None:
            self._flusher = self._loop.call_later(_FLUSH_S, self._flush)

    def _flush(self) -> None:
        self._flusher = None
        if self._cell is not None:
            self._cell.flush()

    def _drain_raw(self) -> None:
        """Take what the child wrote before its result (it flushed before replying); a
        bounded number of reads, in case something in the sandbox keeps writing."""
        for fd in list(self._raw):
            for _ in range(64):
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:
                    break
                if not data:
                    break
                self._take(self._raw[fd], data)

    async def _wait_exit(self) -> None:
        assert self._proc is not None
        try:
            await self._proc.wait()
        finally:
            self._exited.set()

    def _returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    def _exit_text(self) -> str:
        report = self._exit_report or {}
        code = report.get("code")
        if not isinstance(code, int):
            code = self._returncode()
        if isinstance(code, int) and code < 0:
            return f"killed by {_signal_name(-code)}"
        if isinstance(code, int) and code > 128:
            return f"killed by {_signal_name(code - 128)}"
        return f"exit status {code}"

    # -- talking to the child ---------------------------------------------------------------

    def _write(self, message: dict[str, Any]) -> None:
        if self._commands is None or self._commands.is_closing():
            return
        self._commands.write((json.dumps(message, ensure_ascii=False) + "\n").encode())

    def _stop(self, cell: _Cell, reason: str) -> None:
        """Interrupt the call; if it has not stopped `interrupt_grace_s` later, kill."""
        cell.stopped = reason
        cell.kill_at = time.monotonic() + self.policy.interrupt_grace_s
        self._write({"type": "interrupt", "id": cell.id})
        self._messages.put_nowait(_WAKE)

    def _killed_for_cpu(self, report: dict[str, Any]) -> bool:
        """Did the kernel end the interpreter for its lifetime CPU time (RLIMIT_CPU: SIGXCPU,
        or SIGKILL at the hard limit once the code ignored SIGXCPU)?"""
        code = report.get("code")
        if not isinstance(code, int):
            code = self._returncode()
        if code == -signal.SIGXCPU:
            return True
        cpu = report.get("cpu_s")
        lifetime = self.limits.lifetime_cpu_s
        return code == -signal.SIGKILL and isinstance(cpu, int | float) and cpu >= lifetime

    def _cpu_now(self) -> float:
        """CPU seconds used by every process of the sandbox (those that ended included)."""
        return 0.0 if self._proc is None else _tree_cpu_seconds(self._proc.pid)

    # -- calls -------------------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        *,
        wall_s: float,
        cpu_s: float,
        sink: OutputSink | None,
        on_call: PrimitiveHandler,
    ) -> CellOutcome:
        """Run one cell; returns how it ended. Cancelling it (an abort) interrupts the code
        at once and returns; the cell is then settled (or the sandbox killed) in the
        background, and the next call waits for that."""
        await self._idle.wait()
        if not self.alive:
            return CellOutcome(ok=False, stopped="died", died=True, error=_gone(self._exit_text()))
        cell = _Cell(uuid.uuid4().hex, sink, self.limits.output_bytes)
        self._cell = cell
        self._idle.clear()
        try:
            cell.cpu_budget = cpu_s
            cell.cpu_mark = self._cpu_now()
            self._write({"type": "execute", "id": cell.id, "code": code})
            outcome = await self._await_result(cell, time.monotonic() + wall_s, on_call)
        except asyncio.CancelledError:
            if cell.stopped is None:
                self._stop(cell, "aborted")
            self._settling = self._loop.create_task(self._settle(cell))
            raise
        except BaseException:
            self.kill()  # in an unknown state: never reuse it
            self._end_cell()
            raise
        self._end_cell()
        return outcome

    def _end_cell(self) -> None:
        if self._cell is not None:
            self._cell.flush()
        self._cell = None
        self._idle.set()

    async def _settle(self, cell: _Cell) -> None:
        async def refuse(message: dict[str, Any]) -> dict[str, Any]:
            return {"ok": False, "error": {"type": "RuntimeError", "message": "call cancelled"}}

        try:
            await self._await_result(cell, time.monotonic(), refuse)
        except Exception as exc:
            _log.warning("pyrepl.settle_failed", error=str(exc))
            self.kill()
        finally:
            self._settling = None
            self._end_cell()

    async def _await_result(
        self, cell: _Cell, deadline: float, on_call: PrimitiveHandler
    ) -> CellOutcome:
        while True:
            now = time.monotonic()
            if cell.stopped is None:
                if now >= deadline:
                    self._stop(cell, "wall")
                elif self._cpu_now() - cell.cpu_mark >= cell.cpu_budget:
                    self._stop(cell, "cpu")
            if cell.kill_at is not None and now >= cell.kill_at:
                self.kill()
                return await self._dead_outcome(cell)
            wake = cell.kill_at if cell.kill_at is not None else min(deadline, now + _CPU_POLL_S)
            try:
                async with asyncio.timeout(max(wake - now, 0.0)):
                    message = await self._messages.get()
            except TimeoutError:
                continue
            if message is _EOF:
                self._dead = True
                return await self._dead_outcome(cell)
            if message.get("id") != cell.id:
                continue  # _WAKE, or a stale or forged message
            kind = message.get("type")
            if kind == "call":
                reply = await on_call(message)
                self._write({"type": "reply", "call": message.get("call"), **reply})
            elif kind == "result":
                self._drain_raw()
                return self._outcome(cell, message)

    def _outcome(self, cell: _Cell, message: dict[str, Any]) -> CellOutcome:
        cell.flush()
        ok = message.get("ok") is True
        stopped = message.get("stopped")
        if cell.stopped == "output":
            stopped = "output"  # however it ended, its output was cut
        elif cell.stopped is not None and stopped in ("interrupt", None) and not ok:
            stopped = cell.stopped  # our interrupt: say why we sent it
        elif cell.stopped is not None and ok:
            stopped = None  # it finished just before the interrupt landed
        value = message.get("value")
        error = message.get("error")
        return CellOutcome(
            ok=ok,
            value=value if isinstance(value, str) else None,
            error=error if isinstance(error, dict) else None,
            stopped=stopped if isinstance(stopped, str) else None,
            stdout=cell.text("stdout"),
            stderr=cell.text("stderr"),
            output_bytes=cell.output_bytes,
            elapsed_s=time.monotonic() - cell.started,
        )

    async def _dead_outcome(self, cell: _Cell) -> CellOutcome:
        """The interpreter died during the call: why, as well as we can tell."""
        self._dead = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._exited.wait()
        self._drain_raw()
        cell.flush()
        report = self._exit_report or {}
        stopped = cell.stopped or ("cpu" if self._killed_for_cpu(report) else "died")
        return CellOutcome(
            ok=False,
            stopped=stopped,
            died=True,
            error=_gone(self._exit_text()),
            stdout=cell.text("stdout"),
            stderr=cell.text("stderr"),
            output_bytes=cell.output_bytes,
            elapsed_s=time.monotonic() - cell.started,
            exit=report or None,
        )

    async def inspect(self, timeout_s: float) -> list[dict[str, Any]]:
        """The interpreter's variables: name, type and a short repr of each."""
        await self._idle.wait()
        if not self.alive:
            return []
        request = uuid.uuid4().hex
        self._write({"type": "inspect", "id": request})
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    message = await self._messages.get()
                    if message is _EOF:
                        return []
                    if message.get("type") == "inspected" and message.get("id") == request:
                        variables = message.get("variables")
                        return [v for v in variables or [] if isinstance(v, dict)]
        except TimeoutError:
            raise SandboxError(f"the interpreter did not answer within {timeout_s:g} s") from None


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _gone(how: str) -> dict[str, Any]:
    return {
        "type": "SandboxDied",
        "message": f"the interpreter stopped ({how})",
        "line": None,
        "snippet": None,
        "traceback": "",
    }


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(part) for part in text.split()]


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU time of `root` and every process below it, including the
    children they have already reaped (so a process's time is counted while it runs and
    after it ends, once). Read from /proc; processes that vanish meanwhile count 0."""
    ticks = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
        todo.extend(_children(pid))
    return ticks / os.sysconf("SC_CLK_TCK")


def _python_prefixes() -> list[str]:
    """Directories the interpreter reads its standard library (and packages) from."""
    import sys
    import sysconfig

    paths = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            paths.add(sysconfig.get_paths()[name])
    executable = os.path.realpath(sys.executable)
    paths.add(os.path.dirname(os.path.dirname(executable)))
    return sorted(p for p in paths if p)
