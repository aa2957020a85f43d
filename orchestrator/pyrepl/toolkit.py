"""`PyRepl`: a persistent, sandboxed Python interpreter an agent drives with tools.

    repl = PyRepl()
    @llm_chat(llm_interface=llm, toolkit=repl.toolset, self_reference=SelfReference())
    async def analyst(message: str, history=None): '''You answer with Python.'''

The tools keep SimpleLLMFunc's names and arguments: `execute_code(code,
timeout_seconds=None)` and `reset_repl()`, plus `inspect_repl()` (the variables and the
sandbox). stdout and stderr stream as `kernel_stdout` / `kernel_stderr` custom events while
the code runs; the result is the call's value, output and error.

Where the interpreter lives: one per session (in-process calls: one per PyRepl, as in
SimpleLLMFunc) and per fork (a fork gets its own, empty), on the worker that runs the
call. Every input that ran to its end is appended to the session's journal, with the
replies of the runtime primitives it called. When a call finds no interpreter for its
session on this worker (another worker ran the session before, this one restarted, or
the interpreter was killed by a limit) or one that other workers have moved past, the
interpreter is re-created by replaying the journal (primitive replies played back, not
performed again), and the result says so. If the journal cannot rebuild it (expired,
over its bounds, or a replayed input failed) the result says the state was lost.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from orchestrator.errors import SandboxLimitError, StoreError, ToolError
from orchestrator.ports import JournalHead, JournalLimits, SessionJournal
from orchestrator.pyrepl.bridge import LiveBridge, ReplayBridge, available
from orchestrator.pyrepl.limits import SandboxLimits, SandboxPolicy
from orchestrator.pyrepl.sandbox import CellOutcome, Sandbox
from orchestrator.runtime.journal import InMemorySessionJournal
from orchestrator.runtime.tools import Tool

__all__ = ["PyRepl"]

_log = structlog.get_logger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_LOCAL = "-"  # the "session" of in-process calls
_LIMITS = ("wall", "cpu", "memory", "output", "processes", "disk", "died")
JOURNAL_VERSION = 1

Position = tuple[str | None, int]


@dataclass
class _Slot:
    """One interpreter (or its absence) for a session and fork, on this worker."""

    key: tuple[str, str]
    journal_name: str
    loop: asyncio.AbstractEventLoop
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sandbox: Sandbox | None = None
    # The journal position the interpreter's state stands for (None: unknown).
    position: Position | None = None
    last_used: float = field(default_factory=time.monotonic)


@dataclass
class _Where:
    key: tuple[str, str]
    journal: SessionJournal
    name: str


@dataclass
class _Ready:
    sandbox: Sandbox
    replayed: int = 0
    note: str | None = None


class PyRepl:
    """A sandboxed Python REPL for agents; mount `toolset` on an `llm_chat` agent.

    `limits` bound every call and interpreter, `policy` says how interpreters are
    isolated and pooled (see `SandboxLimits`, `SandboxPolicy`). `execution_timeout_seconds`
    is SimpleLLMFunc's name for `limits.wall_s`. `name` keeps two PyRepls of one agent
    apart (each has its own interpreter per session).
    """

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        policy: SandboxPolicy | None = None,
        *,
        name: str = "pyrepl",
        execution_timeout_seconds: float | None = None,
    ) -> None:
        limits = limits or SandboxLimits()
        if execution_timeout_seconds is not None:
            limits = replace(limits, wall_s=float(execution_timeout_seconds))
        if not _NAME.fullmatch(name):
            raise ToolError(f"PyRepl name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
        self.limits = limits
        self.policy = policy or SandboxPolicy()
        self.name = name
        self._local_journal = InMemorySessionJournal(JournalLimits())
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._tools: list[Tool] | None = None

    # -- the tools -------------------------------------------------------------------------

    @property
    def toolset(self) -> list[Tool]:
        """`execute_code`, `reset_repl` and `inspect_repl`, bound to this REPL."""
        if self._tools is None:
            self._tools = self._make_tools()
        return list(self._tools)

    def _make_tools(self) -> list[Tool]:
        repl = self

        async def execute_code(
            code: str,
            timeout_seconds: float | None = None,
            event_emitter: Any = None,
            runtime: Any = None,
        ) -> dict[str, Any]:
            """Run Python code in your persistent interpreter.

            Args:
                code: Python statements; the value of a final expression is returned.
                timeout_seconds: Wall-clock limit for this call (default and maximum below).
            """
            return await repl.execute(
                code, timeout_seconds, event_emitter=event_emitter, runtime=runtime
            )

        async def reset_repl(runtime: Any = None) -> str:
            """Reset the interpreter: clear every variable and the files of its working
            directory, for this session."""
            return await repl.reset(runtime=runtime)

        async def inspect_repl(runtime: Any = None) -> dict[str, Any]:
            """List the interpreter's variables (name, type, short repr) and describe its
            sandbox and limits."""
            return await repl.inspect(runtime=runtime)

        return [
            Tool(func=execute_code, description=self._describe()),
            Tool(func=reset_repl),
            Tool(func=inspect_repl),
        ]

    def _describe(self) -> str:
        lim = self.limits
        where = {
            "required": "It runs in a sandbox without network, in a private working directory",
            "preferred": (
                "It runs in a sandbox (without network, in a private working directory) "
                "where the worker allows one; each result says"
            ),
            "off": "It runs without a sandbox, with the worker's network and files",
        }[self.policy.isolate]
        return (
            "Run Python code in your persistent Python interpreter: variables, functions, "
            "imports and files in the working directory persist between calls (this "
            "session only). stdout/stderr stream live; the value of a final expression is "
            f"returned. {where}, "
            f"with limits per call: {lim.wall_s:g} s wall clock (timeout_seconds may ask for "
            f"up to {lim.max_wall_s:g} s), {lim.cpu_s:g} s CPU, {lim.memory_mb} MiB memory, "
            f"{lim.output_bytes} bytes of output; processes a call starts end with it. "
            "Inside the code, runtime primitives are called as runtime.<namespace>.<name>(...),"
            " e.g. runtime.selfref.context.remember(text), runtime.selfref.fork.spawn(task) "
            "and runtime.selfref.fork.gather_all(); runtime.list_primitives() lists them. "
            "input() is not available: put data in the code."
        )

    # -- the operations ----------------------------------------------------------------------

    async def execute(
        self,
        code: str,
        timeout_seconds: float | None = None,
        *,
        event_emitter: Any = None,
        runtime: Any = None,
    ) -> dict[str, Any]:
        """Run `code` in the session's interpreter; returns SimpleLLMFunc's result fields
        (success, stdout, stderr, return_value, error, error_details, execution_time_ms)
        plus `sandbox` (its isolation) and, after a rebuild, `replayed` and `note`.

        A limit (wall clock, CPU, memory, output, processes, disk) raises
        `SandboxLimitError`, whose message the model reads. While forks are running, a
        `runtime.selfref.fork.gather_all()` inside the code suspends the turn (the cell is
        stopped, and runs again from its start when the forks have ended).
        """
        if not isinstance(code, str):
            raise ToolError("execute_code: code must be a string")
        if timeout_seconds is not None and not timeout_seconds > 0:
            raise ToolError("execute_code: timeout_seconds must be greater than 0")
        wall_s = self.limits.wall_for(timeout_seconds)
        where = self._where(runtime)
        emit = _Emitter(event_emitter)
        async with self._held(where) as slot:
            ready = await self._ready(slot, where, emit)
            bridge = LiveBridge(runtime)
            outcome = await ready.sandbox.execute(
                code, wall_s=wall_s, cpu_s=self.limits.cpu_s, sink=emit.output, on_call=bridge
            )
            if bridge.suspended is not None:
                # A gather is waiting for forks: the turn suspends, and this cell runs
                # again from its start when they have ended (so it is not journaled).
                raise bridge.suspended
            if outcome.stopped is None:
                await self._record(slot, where, code, wall_s, bridge, outcome)
            if outcome.died:
                await self._drop_sandbox(slot)
            result = _result(self.limits, outcome, ready)
        if outcome.stopped in _LIMITS:
            message = _limit_message(self.limits, outcome, wall_s)
            raise SandboxLimitError(message, limit=outcome.stopped or "died")
        return result

    async def reset(self, *, runtime: Any = None) -> str:
        """Clear the session's interpreter: variables, files, and its journal."""
        where = self._where(runtime)
        async with self._held(where) as slot:
            await self._drop_sandbox(slot)
            head = await where.journal.reset(where.name)
            slot.position = (head.generation, head.seq)
        return "REPL reset: every variable and file is gone; the next call starts afresh."

    async def inspect(self, *, runtime: Any = None) -> dict[str, Any]:
        """The session interpreter's variables, sandbox and journal."""
        where = self._where(runtime)
        async with self._held(where) as slot:
            ready = await self._ready(slot, where, _Emitter(None))
            variables = await ready.sandbox.inspect(timeout_s=self.limits.wall_s)
            head = await where.journal.head(where.name)
            sandbox = ready.sandbox
        report: dict[str, Any] = {
            "variables": variables,
            "sandbox": dict(sandbox.isolation, working_directory=sandbox.cwd),
            "limits": {
                "wall_s": self.limits.wall_s,
                "max_wall_s": self.limits.max_wall_s,
                "cpu_s": self.limits.cpu_s,
                "memory_mb": self.limits.memory_mb,
                "output_bytes": self.limits.output_bytes,
                "processes": self.limits.processes,
                "disk_mb": self.limits.disk_mb,
            },
            "journal": {"inputs": head.seq, "complete": head.complete},
            "runtime_primitives": available(runtime),
        }
        if ready.note:
            report["note"] = ready.note
        return report

    async def close(self) -> None:
        """Stop every interpreter this PyRepl started (in this process)."""
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            await self._drop_sandbox(slot)

    @property
    def interpreters(self) -> int:
        """How many interpreters are running here."""
        return sum(1 for s in self._slots.values() if s.sandbox is not None and s.sandbox.alive)

    # -- where a call runs --------------------------------------------------------------------

    def _where(self, runtime: Any) -> _Where:
        session = getattr(runtime, "session", None)
        if session is None:
            name = f"{self.name}.main"
            return _Where((_LOCAL, name), self._local_journal, name)
        name = f"{self.name}.{session.fork_id or 'main'}"
        return _Where((session.session_id, name), session.journal, name)

    def _held(self, where: _Where) -> _HeldSlot:
        return _HeldSlot(self, where)

    async def _slot(self, where: _Where) -> _Slot:
        loop = asyncio.get_running_loop()
        await self._tidy(loop, keep=where.key)
        slot = self._slots.get(where.key)
        if slot is None or slot.loop is not loop:
            if slot is not None and slot.sandbox is not None:
                slot.sandbox.kill()  # started on another (gone) event loop
            slot = self._slots[where.key] = _Slot(where.key, where.name, loop)
        return slot

    async def _tidy(self, loop: asyncio.AbstractEventLoop, keep: tuple[str, str]) -> None:
        """Close interpreters idle too long, then the least recently used ones over the
        pool's size (their state is rebuilt from the journal if they are needed again)."""
        now = time.monotonic()
        idle = [
            s
            for s in self._slots.values()
            if s.key != keep and s.loop is loop and not s.lock.locked() and s.sandbox is not None
        ]
        live = sum(1 for s in self._slots.values() if s.sandbox is not None)
        idle.sort(key=lambda s: s.last_used)
        for slot in idle:
            expired = now - slot.last_used > self.policy.idle_timeout_s
            if not expired and live < self.policy.max_interpreters:
                continue
            self._slots.pop(slot.key, None)
            await self._drop_sandbox(slot)
            live -= 1

    async def _drop_sandbox(self, slot: _Slot) -> None:
        sandbox, slot.sandbox = slot.sandbox, None
        if sandbox is not None:
            await sandbox.close()

    # -- keeping the interpreter in step with the journal --------------------------------------

    async def _ready(self, slot: _Slot, where: _Where, emit: _Emitter) -> _Ready:
        """The slot's interpreter, standing where the session's journal stands."""
        try:
            return await self._bring_up(slot, where, emit)
        except BaseException:
            slot.position = None  # cut short (an abort, a failed start): rebuild next time
            raise

    async def _bring_up(self, slot: _Slot, where: _Where, emit: _Emitter) -> _Ready:
        head = await where.journal.head(where.name)
        here: Position = (head.generation, head.seq)
        sandbox = slot.sandbox
        if sandbox is not None and not sandbox.alive:
            await self._drop_sandbox(slot)
            sandbox = None
        if sandbox is not None:
            if slot.position == here:
                return _Ready(sandbox)
            if head.generation is None and slot.position is not None:
                # The journal expired while this interpreter lived: keep it, and mark the
                # journal as missing its history (elsewhere the state cannot be rebuilt).
                head = await where.journal.reset(where.name, complete=False)
                slot.position = (head.generation, head.seq)
                return _Ready(sandbox)
            behind = slot.position is not None and slot.position[0] == head.generation
            if behind and slot.position is not None and slot.position[1] < head.seq:
                return await self._catch_up(slot, where, emit, sandbox, slot.position[1])
            reason = "other turns of this session changed it on another worker"
        elif slot.position is not None:
            reason = "the previous interpreter was stopped"
        else:
            reason = "this worker had no interpreter for this session"
        await self._drop_sandbox(slot)
        sandbox = slot.sandbox = await self._start()
        if head.seq == 0:
            slot.position = here
            return _Ready(sandbox)
        return await self._rebuild(slot, where, emit, sandbox, reason)

    async def _start(self) -> Sandbox:
        return await Sandbox.start(self.policy, self.limits)

    async def _catch_up(
        self, slot: _Slot, where: _Where, emit: _Emitter, sandbox: Sandbox, done: int
    ) -> _Ready:
        """Replay only the inputs other workers ran since this interpreter's last one."""
        record = await where.journal.read(where.name)
        if record.generation != (slot.position or (None, 0))[0] or not record.complete:
            await self._drop_sandbox(slot)
            slot.sandbox = await self._start()
            return await self._rebuild(
                slot, where, emit, slot.sandbox, "other turns of this session changed it"
            )
        entries = record.entries[done:]
        failure = await self._replay(sandbox, entries, emit)
        slot.position = (record.generation, record.seq)
        note = (
            f"{len(entries)} input(s) other turns of this session ran on another worker were "
            "replayed here first, to bring this interpreter up to date."
        )
        if failure:
            note += f" {failure}"
        return _Ready(sandbox, replayed=len(entries), note=note)

    async def _rebuild(
        self, slot: _Slot, where: _Where, emit: _Emitter, sandbox: Sandbox, reason: str
    ) -> _Ready:
        """Fill a fresh interpreter by replaying the session's journal."""
        record = await where.journal.read(where.name)
        if not record.complete:
            slot.position = (record.generation, record.seq)
            kept = f"{record.stored} of {record.seq}"
            return _Ready(
                sandbox,
                note=(
                    f"STATE LOST: a new interpreter was started ({reason}), and this "
                    f"session's journal no longer holds every earlier input ({kept} kept: "
                    "over its size bounds, or expired), so variables and files from earlier "
                    "calls are gone. Re-create what you need."
                ),
            )
        failure = await self._replay(sandbox, record.entries, emit)
        slot.position = (record.generation, record.seq)
        if failure and not sandbox.alive:
            await self._drop_sandbox(slot)
            slot.sandbox = await self._start()
            return _Ready(
                slot.sandbox,
                note=(
                    f"STATE LOST: a new interpreter was started ({reason}), but replaying "
                    f"this session's earlier inputs failed ({failure}): it starts empty."
                ),
            )
        note = (
            f"This session's interpreter was re-created on this worker ({reason}): its "
            f"{record.stored} earlier input(s) were replayed to restore variables and files "
            "(their output is not shown again; runtime primitive results were played back)."
        )
        if failure:
            note += f" Caution: {failure}"
        return _Ready(slot.sandbox or sandbox, replayed=record.stored, note=note)

    async def _replay(
        self, sandbox: Sandbox, entries: list[dict[str, Any]], emit: _Emitter
    ) -> str | None:
        """Run journal entries again, quietly; returns what went wrong (None: nothing)."""
        if not entries:
            return None
        emit.event("kernel_replay", {"inputs": len(entries)})
        problems: list[str] = []
        for number, entry in enumerate(entries, start=1):
            code = entry.get("code")
            wall = entry.get("wall_s")
            try:
                bridge = ReplayBridge(entry.get("calls", []))
            except ToolError:
                bridge = None
            if not isinstance(code, str) or bridge is None:
                return f"input {number} of the journal is unreadable"
            outcome = await sandbox.execute(
                code,
                wall_s=float(wall) if isinstance(wall, int | float) else self.limits.wall_s,
                cpu_s=self.limits.cpu_s,
                sink=None,
                on_call=bridge,
            )
            if outcome.stopped is not None:
                return (
                    f"replaying stopped at input {number} of {len(entries)} "
                    f"({outcome.stopped}): only the inputs before it are restored"
                )
            if outcome.ok != bool(entry.get("ok", True)) or bridge.diverged:
                problems.append(str(number))
        if problems:
            return (
                f"input(s) {', '.join(problems)} behaved differently when replayed "
                "(time, randomness or outside data?): some values may differ."
            )
        return None

    async def _record(
        self,
        slot: _Slot,
        where: _Where,
        code: str,
        wall_s: float,
        bridge: LiveBridge,
        outcome: CellOutcome,
    ) -> None:
        """Append a finished input to the journal (and note where that leaves us)."""
        entry = {
            "v": JOURNAL_VERSION,
            "code": code,
            "ok": outcome.ok,
            "wall_s": wall_s,
            "calls": bridge.calls,
        }
        before = slot.position
        try:
            head = await where.journal.append(where.name, entry)
        except (StoreError, ToolError) as exc:
            # This interpreter has the input; the journal does not: another worker would
            # rebuild without it. Keep going here (the call itself worked).
            _log.warning("pyrepl.journal_append_failed", name=where.name, error=str(exc))
            return
        slot.position = _advanced(before, head)


def _advanced(before: Position | None, head: JournalHead) -> Position | None:
    """The interpreter's position after its append: the journal's head, if nobody else
    appended meanwhile (else unknown, and the next call rebuilds)."""
    if before is None:
        return None
    generation, seq = before
    if head.seq == seq + 1 and generation in (None, head.generation):
        return (head.generation, head.seq)
    return None


class _HeldSlot:
    """`async with repl._held(where) as slot`: the slot, locked, still in the pool."""

    def __init__(self, repl: PyRepl, where: _Where) -> None:
        self._repl = repl
        self._where = where
        self._slot: _Slot | None = None

    async def __aenter__(self) -> _Slot:
        while True:
            slot = await self._repl._slot(self._where)
            await slot.lock.acquire()
            if self._repl._slots.get(slot.key) is slot:
                break
            slot.lock.release()  # closed while we waited: take the new one
        slot.last_used = time.monotonic()
        self._slot = slot
        return slot

    async def __aexit__(self, *exc: object) -> None:
        if self._slot is not None:
            self._slot.last_used = time.monotonic()
            self._slot.lock.release()


class _Emitter:
    """The tool's event emitter (sync or async `emit`), or nothing."""

    def __init__(self, emitter: Any) -> None:
        self._emitter = emitter
        self._pending: set[asyncio.Future[Any]] = set()

    def event(self, name: str, data: dict[str, Any]) -> None:
        if self._emitter is None:
            return
        result = self._emitter.emit(name, data)
        if inspect.iscoroutine(result):
            task = asyncio.ensure_future(result)
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def output(self, stream: str, text: str) -> None:
        self.event(f"kernel_{stream}", {"text": text})


def _clip(text: str, limit: int) -> str:
    """Head and tail of a long output, with what was left out in between."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters not shown ...]\n{text[-half:]}"


def _error_text(error: dict[str, Any] | None) -> str | None:
    if not error:
        return None
    message = error.get("message") or ""
    return f"{error.get('type', 'Error')}: {message}" if message else str(error.get("type"))


def _sandbox_summary(sandbox: Sandbox) -> dict[str, Any]:
    isolation = sandbox.isolation
    if isolation.get("mode") == "isolated":
        return {"isolation": "isolated", "working_directory": sandbox.cwd}
    return {
        "isolation": "NONE",
        "reason": isolation.get("reason"),
        "warning": "the code runs with the worker's user, network and files",
        "working_directory": sandbox.cwd,
    }


def _result(limits: SandboxLimits, outcome: CellOutcome, ready: _Ready) -> dict[str, Any]:
    """What the model sees of a call that ran (to its end, or to an exception)."""
    limit = limits.result_chars
    details = outcome.error
    result: dict[str, Any] = {
        "success": outcome.ok,
        "stdout": _clip(outcome.stdout, limit),
        "stderr": _clip(outcome.stderr, limit),
        "return_value": outcome.value,
        "error": _error_text(details) if not outcome.ok else None,
        "error_details": details if not outcome.ok else None,
        "execution_time_ms": round(outcome.elapsed_s * 1000, 1),
        "sandbox": _sandbox_summary(ready.sandbox),
    }
    if ready.replayed:
        result["replayed"] = ready.replayed
    if ready.note:
        result["note"] = ready.note
    return result


def _limit_message(lim: SandboxLimits, outcome: CellOutcome, wall_s: float) -> str:
    """The error the model reads when the code hit a limit."""
    what = {
        "wall": f"wall-clock limit: the code ran longer than {wall_s:g} s and was stopped",
        "cpu": f"CPU-time limit: the code used more than {lim.cpu_s:g} s of CPU and was stopped",
        "memory": (
            f"memory limit: the code needed more than {lim.memory_mb} MiB (MemoryError) and "
            "was stopped"
        ),
        "output": (
            f"output limit: the code printed more than {lim.output_bytes} bytes; the rest was "
            "dropped and the code was stopped"
        ),
        "processes": (
            f"process limit: the code tried to run more than {lim.processes} processes or "
            "threads; they were stopped"
        ),
        "disk": (
            f"disk limit: the working directory holds at most {lim.disk_mb} MiB, a file at "
            f"most {lim.file_mb} MiB"
        ),
        "died": f"the interpreter stopped unexpectedly ({_error_text(outcome.error)})",
    }[outcome.stopped or "died"]
    if outcome.died:
        what += (
            ". The interpreter was restarted: the next call restores its variables by "
            "replaying this session's earlier inputs (not this one)"
        )
    elif outcome.error and outcome.stopped not in ("wall", "cpu", "output"):
        what += f" ({_error_text(outcome.error)})"
    shown = (outcome.stdout + outcome.stderr)[-2000:]
    if shown.strip():
        what += f". Output before it stopped (end):\n{shown}"
    return what
