"""Progress of a batch of prompts: rich's bar when rich is installed, else a plain line.

Shown only on a terminal by default. rich is an optional extra ([cli]); it is looked up
when a bar is made, so the library and the workers never need it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Literal, Protocol, TextIO

ProgressMode = Literal["auto", "rich", "plain", "none"] | bool | None


class Progress(Protocol):
    def advance(self, cost: float) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def advance(self, cost: float) -> None:
        return None

    def close(self) -> None:
        return None


class PlainProgress:
    """`done/total  cost $x` rewritten in place on one line."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.done = 0
        self.cost = 0.0
        self._stream = stream
        self._draw()

    def advance(self, cost: float) -> None:
        self.done += 1
        self.cost += cost
        self._draw()

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "-" * (width - filled)
        self._stream.write(f"\r[{bar}] {self.done}/{self.total}  ${self.cost:.4f}")
        self._stream.flush()

    def close(self) -> None:
        self._stream.write("\n")
        self._stream.flush()


class RichProgress:
    def __init__(self, total: int, stream: TextIO) -> None:
        rich_progress = importlib.import_module("rich.progress")
        console = importlib.import_module("rich.console").Console(file=stream)
        self._bar = rich_progress.Progress(
            rich_progress.TextColumn("Processing prompts"),
            rich_progress.BarColumn(),
            rich_progress.MofNCompleteColumn(),
            rich_progress.TextColumn("${task.fields[cost]:.4f}"),
            rich_progress.TimeElapsedColumn(),
            transient=False,
            console=console,
        )
        self._cost = 0.0
        self._task = self._bar.add_task("prompts", total=total, cost=0.0)
        self._bar.start()

    def advance(self, cost: float) -> None:
        self._cost += cost
        self._bar.update(self._task, advance=1, cost=self._cost)

    def close(self) -> None:
        self._bar.stop()


def make_progress(mode: ProgressMode, total: int, stream: TextIO | None = None) -> Progress:
    """A progress display for `total` prompts. "auto" (or True): rich's bar if rich is
    installed, else a plain one, and only when `stream` (stderr) is a terminal."""
    out = stream if stream is not None else sys.stderr
    if mode in (None, False, "none"):
        return NoProgress()
    if mode in ("auto", True) and not out.isatty():
        return NoProgress()
    wants_rich = mode in ("auto", True, "rich")
    if wants_rich and importlib.util.find_spec("rich") is not None:
        return RichProgress(total, out)
    return PlainProgress(total, out)
