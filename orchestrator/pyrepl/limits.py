"""What a PyRepl sandbox allows (`SandboxLimits`) and how it is built (`SandboxPolicy`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from orchestrator.errors import AgentError

__all__ = ["IsolationMode", "SandboxLimits", "SandboxPolicy"]

IsolationMode = Literal["required", "preferred", "off"]

# Directories the code cannot see (each covered by an empty, read-only tmpfs), except the
# Python installation the interpreter needs, which is bound back in read-only.
DEFAULT_HIDDEN = ("/root", "/home", "/run", "/dev/shm", "/var/tmp", "/mnt", "/media")


@dataclass(frozen=True)
class SandboxLimits:
    """Per call (`wall_s`, `cpu_s`, `output_bytes`) and per interpreter limits.

    wall_s          a call is interrupted after this long (the model may ask for another
                    timeout with `timeout_seconds`, up to `max_wall_s`)
    cpu_s           CPU time one call may use (all the sandbox's processes together,
                    measured from outside while the call runs)
    lifetime_cpu_s  CPU time each process of the sandbox may use in its life (RLIMIT_CPU:
                    the kernel's backstop, e.g. for a thread left spinning between calls)
    memory_mb       address space of each process (RLIMIT_AS): over it, MemoryError
    output_bytes    stdout + stderr one call may print; past it the call is stopped
    result_chars    how much of stdout/stderr the model sees in the result (head and tail;
                    the events carry everything up to `output_bytes`)
    processes       processes and threads of the sandbox's user (RLIMIT_NPROC)
    disk_mb         size of the private /tmp (a tmpfs: it counts as memory)
    file_mb         largest file the code may write (RLIMIT_FSIZE)
    open_files      RLIMIT_NOFILE
    """

    wall_s: float = 60.0
    max_wall_s: float = 600.0
    cpu_s: float = 30.0
    lifetime_cpu_s: float = 3600.0
    memory_mb: int = 512
    output_bytes: int = 1 << 20
    result_chars: int = 20_000
    processes: int = 32
    disk_mb: int = 64
    file_mb: int = 64
    open_files: int = 256

    def __post_init__(self) -> None:
        for name in ("wall_s", "max_wall_s", "cpu_s", "lifetime_cpu_s"):
            if not getattr(self, name) > 0:
                raise AgentError(f"SandboxLimits.{name} must be greater than 0")
        minimums = {
            "memory_mb": 64,
            "output_bytes": 1024,
            "result_chars": 200,
            "processes": 4,
            "disk_mb": 1,
            "file_mb": 1,
            "open_files": 32,
        }
        for name, least in minimums.items():
            if getattr(self, name) < least:
                raise AgentError(f"SandboxLimits.{name} must be at least {least}")

    def wall_for(self, timeout_seconds: float | None) -> float:
        """The wall-clock limit of one call (the model's `timeout_seconds`, capped)."""
        if timeout_seconds is None:
            return self.wall_s
        return min(float(timeout_seconds), self.max_wall_s)


@dataclass(frozen=True)
class SandboxPolicy:
    """How interpreters are isolated and pooled on a worker.

    isolate             "required": namespaces and a dedicated user, or the call fails (the
                        worker must run as root); "preferred": the same, else run without
                        isolation (every result says so); "off": never isolate (trusted
                        code only: it runs as the worker's user, with the worker's network
                        and files)
    hide                directories the code cannot see (the Python installation excepted)
    uid_base            interpreter N runs as uid `uid_base + pid of its sandbox`: one user
                        per sandbox, so sandboxes cannot signal or trace each other and the
                        process limit is theirs alone
    python              the interpreter (default: the worker's own)
    start_timeout_s     how long an interpreter may take to start
    interrupt_grace_s   after an interrupt (timeout, output limit, abort), how long the code
                        has to stop before the sandbox is killed (its state is then rebuilt
                        from the session's journal at the next call)
    max_interpreters    interpreters kept on one worker (least recently used closed first)
    idle_timeout_s      an interpreter unused this long is closed
    """

    isolate: IsolationMode = "required"
    hide: tuple[str, ...] = DEFAULT_HIDDEN
    uid_base: int = 1_000_000
    python: str | None = None
    start_timeout_s: float = 15.0
    interrupt_grace_s: float = 1.0
    max_interpreters: int = 16
    idle_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.isolate not in ("required", "preferred", "off"):
            raise AgentError(
                f"SandboxPolicy.isolate must be 'required', 'preferred' or 'off', "
                f"not {self.isolate!r}"
            )
        if self.uid_base < 1000:
            raise AgentError("SandboxPolicy.uid_base must be at least 1000 (not a system user)")
        if self.max_interpreters < 1:
            raise AgentError("SandboxPolicy.max_interpreters must be at least 1")

    @property
    def executable(self) -> str:
        return self.python or sys.executable
