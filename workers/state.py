"""A worker's local state files, for the probes and hooks of its host (a Kubernetes pod).

In `ORCHESTRATOR_WORKER_STATE_DIR` (unset: none of this happens):

    alive    touched by the worker on every heartbeat, whether or not Redis answers (an
             outage is weather, not death), so `orchestrator worker --alive` fails only
             when the worker's event loop has not turned for `loop_stall_s`
    drain    written by `orchestrator worker --drain` (a preStop hook): the worker stops
             taking jobs, lets its running turns finish for up to `shutdown_grace_s`, hands
             back those still running (the next attempt resumes them from their checkpoint
             on another worker) and writes `drained` into the file; `--drain` returns then.
             The SIGTERM that follows finds nothing to wait for.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.settings import Settings

__all__ = ["DRAINED", "WorkerState"]

DRAIN_REQUEST = "drain\n"
DRAINED = "drained"


@dataclass(frozen=True)
class WorkerState:
    directory: Path | None
    stale_after_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerState:
        directory = Path(settings.worker_state_dir) if settings.worker_state_dir else None
        return cls(directory=directory, stale_after_s=settings.loop_stall_s)

    @property
    def alive_file(self) -> Path | None:
        return None if self.directory is None else self.directory / "alive"

    @property
    def drain_file(self) -> Path | None:
        return None if self.directory is None else self.directory / "drain"

    # -- the worker's side -----------------------------------------------------------

    def prepare(self) -> None:
        """At process start, before waiting for Redis: the directory exists, and neither
        a drain request nor a heartbeat is left from an earlier process (a restarted
        container keeps its files). Until the first heartbeat `--alive` says "starting"."""
        if self.directory is None or self.drain_file is None or self.alive_file is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.drain_file.unlink(missing_ok=True)
        self.alive_file.unlink(missing_ok=True)

    def touch_alive(self) -> None:
        if self.alive_file is not None:
            self.alive_file.touch()

    def drain_requested(self) -> bool:
        return self.drain_file is not None and self.drain_file.exists()

    def mark_drained(self, handed_back: int) -> None:
        assert self.drain_file is not None
        note = f"{DRAINED}\n" if not handed_back else f"{DRAINED} ({handed_back} handed back)\n"
        self.drain_file.write_text(note)

    # -- the commands' side (`orchestrator worker --alive / --drain`) -----------------

    def _missing_directory(self) -> int:
        print(
            "orchestrator worker: ORCHESTRATOR_WORKER_STATE_DIR is not set "
            "(the worker keeps no state files)",
            file=sys.stderr,
        )
        return 2

    def check_alive(self) -> int:
        """0 if the worker touched `alive` within `stale_after_s` (or has not started
        serving yet: it may be waiting for Redis, which is weather), else 1."""
        if self.alive_file is None:
            return self._missing_directory()
        try:
            age = time.time() - self.alive_file.stat().st_mtime
        except FileNotFoundError:
            print("orchestrator worker: starting (no heartbeat yet)")
            return 0
        except OSError as exc:
            print(f"orchestrator worker: cannot read the heartbeat file: {exc}", file=sys.stderr)
            return 1
        if age > self.stale_after_s:
            print(f"orchestrator worker: last heartbeat {age:.0f}s ago", file=sys.stderr)
            return 1
        return 0

    async def request_drain(self, timeout_s: float, poll_s: float = 0.2) -> int:
        """Ask the worker to drain; 0 once it says it has, 1 if it did not within
        `timeout_s` (the SIGTERM that follows still shuts it down gracefully)."""
        if self.drain_file is None:
            return self._missing_directory()
        self.directory.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        temporary = self.drain_file.with_suffix(f".{os.getpid()}")
        temporary.write_text(DRAIN_REQUEST)
        temporary.replace(self.drain_file)  # atomic: the worker never reads half a file
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                note = self.drain_file.read_text()
            except OSError:
                note = ""
            if note.startswith(DRAINED):
                print(f"orchestrator worker: {note.strip()}")
                return 0
            await asyncio.sleep(poll_s)
        print(f"orchestrator worker: not drained after {timeout_s:.0f}s", file=sys.stderr)
        return 1
