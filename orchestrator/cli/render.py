"""Terminal rendering of a run's live output (demo, `submit --follow`, `tail`).

Every agent in the stream gets a lane: the root run, and each fork at any depth. A fork's
lines are indented by its depth and labelled with its fork id; its lane opens with
`fork_N ┌ queued · depth D · from PARENT` and closes with `fork_N └ STATUS`. The root's
lines are printed as they always were, unindented. Streamed text is kept per lane and
printed a whole line at a time (long lines are wrapped at a word), so agents streaming at
once never interleave mid-line. A gather gets a bar (forks ended / forks gathered) that
advances as each awaited fork ends and is full when the gather returns. Once a tree with
forks has ended, it is drawn once more as a tree with each agent's status.

On a terminal a live view stays at the bottom: the tree of running agents with the line
each is streaming and the bars of their gathers, while finished lines scroll above it.
Anywhere else (a pipe, a file, CI) the output is plain lines, with no cursor movement.
"""

from __future__ import annotations

import json
import re
import threading
from bisect import insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from orchestrator.events import (
    CustomEvent,
    EventOrigin,
    EventYield,
    LLMCallEndEvent,
    LLMCallErrorEvent,
    LLMCallStartEvent,
    LLMChunkArriveEvent,
    ReactEndEvent,
    ReactStartEvent,
    ResponseYield,
    ToolCallEndEvent,
    ToolCallErrorEvent,
    ToolCallStartEvent,
    chunk_text,
)
from orchestrator.runs import RunStatus, StatusEntry, StreamEntry

__all__ = ["EventRenderer", "format_usage", "text_bar"]

SPAWN_TOOL = "selfref_fork_spawn"
GATHER_TOOL = "selfref_fork_gather_all"
GATHER_WAITING = "fork_gather_waiting"

_FORK_ID = re.compile(r"fork_([0-9]+)")
_SAYS = "assistant: "
_BAR_WIDTH = 20
_LIVE_MIN_ROWS = 6
_LIVE_MAX_ROWS = 15
_STATUS_STYLE = {
    RunStatus.QUEUED: "dim",
    RunStatus.RUNNING: "cyan",
    RunStatus.WAITING: "yellow",
    RunStatus.COMPLETED: "green",
    RunStatus.ERROR: "bold red",
    RunStatus.ABORTED: "bold yellow",
}


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_usage(usage: dict[str, Any] | None) -> str:
    if not usage:
        return "tokens: n/a"
    return (
        f"tokens: {usage.get('prompt_tokens', 0)} in / {usage.get('completion_tokens', 0)} out"
        f" / {usage.get('total_tokens', 0)} total"
    )


def text_bar(done: int, total: int, width: int = _BAR_WIDTH) -> str:
    """`[█████░░░░░] 1/2`: a progress bar in plain characters, for any output."""
    filled = width if total <= 0 else min(width, round(width * done / total))
    return f"[{'█' * filled}{'░' * (width - filled)}] {done}/{total}"


def _lane_order(lane: Lane) -> tuple[bool, int]:
    return lane.fork_id is not None, lane.number


def _fork_number(fork_id: str) -> int:
    match = _FORK_ID.fullmatch(fork_id)
    return int(match.group(1)) if match else 0


def _str_list(value: Any) -> list[str]:
    """The strings of a JSON list (anything else: none); event data is untrusted."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


# -- what the renderer knows --------------------------------------------------------------


@dataclass
class Lane:
    """One agent of a fork tree: a root run (fork_id None) or a fork."""

    key: str  # the fork id, or a root's run id
    fork_id: str | None
    depth: int | None = None  # None until the stream says where the fork sits
    parent: str | None = None  # the parent's key
    root: str | None = None  # the root's key
    status: RunStatus = RunStatus.QUEUED
    detail: str = ""
    name: str = ""
    session: str = ""
    pending: str = ""  # streamed text with no line end yet
    said: bool = False  # the current model call has printed its "assistant:" line
    streamed: bool = False  # the current model call streamed text
    placed: bool = False  # the fork's opening line is out
    last: str = ""  # the last line printed, for the live view
    number: int = 0  # N of fork_N: forks are listed in spawn order

    @property
    def ended(self) -> bool:
        return self.status.terminal

    @property
    def label(self) -> str:
        return self.fork_id or "root"


@dataclass
class Gather:
    """A parent waiting for its forks (`gather_all`, from the model or from tool code)."""

    owner: str  # key of the gathering lane
    call_ids: set[str]
    named: list[str] | None = None  # fork ids the call named (None: all the owner's forks)
    awaited: set[str] = field(default_factory=set)
    results: dict[str, str] | None = None  # fork id -> status, once the gather returned
    waiting: bool = False
    closed: bool = False


class ForkTree:
    """Lanes and gathers as learnt from the stream. Forks are announced by a "queued"
    status entry that says nothing of where the fork sits: its place is learnt from the
    spawn call's handle, a gather waiting for it, or the fork's own first event."""

    def __init__(self) -> None:
        self.lanes: dict[str, Lane] = {}
        self.gathers: list[Gather] = []
        self._by_run: dict[str, str] = {}
        self._kids: dict[str, list[Lane]] = {}

    def key_of_run(self, run_id: str) -> str:
        known = self._by_run.get(run_id)
        if known is not None:
            return known
        # A fork's run id is "<root run id>.<fork id>" (orchestrator.runs.fork_run_id).
        head, dot, tail = run_id.rpartition(".")
        return tail if dot and head and _FORK_ID.fullmatch(tail) else run_id

    def lane(self, key: str, fork_id: str | None) -> Lane:
        lane = self.lanes.get(key)
        if lane is None:
            number = _fork_number(fork_id) if fork_id else 0
            lane = self.lanes[key] = Lane(key=key, fork_id=fork_id, number=number)
            if fork_id is None:
                lane.depth, lane.root, lane.placed = 0, key, True
        return lane

    def from_origin(self, origin: EventOrigin) -> Lane:
        lane = self.lane(origin.fork_id or origin.agent_call_id, origin.fork_id)
        self._by_run[origin.agent_call_id] = lane.key
        lane.session = origin.session_id
        if origin.fork_id is not None:
            lane.depth = origin.fork_depth
            if origin.parent_agent_call_id and lane.parent is None:
                self.adopt(lane, self.key_of_run(origin.parent_agent_call_id))
        return lane

    def from_status(self, entry: StreamEntry) -> Lane:
        key = self.key_of_run(entry.run_id)
        lane = self.lane(key, None if key == entry.run_id else key)
        self._by_run[entry.run_id] = key
        if lane.root is None and entry.root_run_id:
            lane.root = self.key_of_run(entry.root_run_id)
        return lane

    def adopt(self, child: Lane, parent_key: str, depth: int | None = None) -> None:
        """Place `child` under `parent_key` (what a handle or a waiting parent tells)."""
        parent = self.lanes.get(parent_key)
        if child.parent is None:
            insort(self._kids.setdefault(parent_key, []), child, key=_lane_order)
        child.parent = parent_key
        if parent is not None:
            child.root = parent.root
        if child.depth is None and depth is not None:
            child.depth = depth
        elif child.depth is None and parent is not None and parent.depth is not None:
            child.depth = parent.depth + 1

    def children(self, key: str) -> list[Lane]:
        return self._kids.get(key, [])

    def tree_of(self, root_key: str) -> list[Lane]:
        """The root's lane and every lane below it."""
        lanes = [lane for lane in self.lanes.values() if lane.root == root_key]
        return sorted(lanes, key=_lane_order)

    def gather_of(self, owner: str, call_ids: Iterable[str]) -> Gather | None:
        wanted = set(call_ids)
        return next((g for g in self.gathers if g.owner == owner and g.call_ids & wanted), None)

    def forks_of(self, gather: Gather) -> list[str]:
        if gather.results is not None:
            forks: Iterable[str] = gather.results
        elif gather.named is not None:
            forks = gather.named
        else:
            forks = gather.awaited | {lane.key for lane in self.children(gather.owner)}
        return sorted(forks, key=_fork_number)

    def awaits(self, gather: Gather, lane: Lane) -> bool:
        """Whether `gather` is waiting for `lane` (`forks_of`, without building it)."""
        if gather.results is not None:
            return lane.key in gather.results
        if gather.named is not None:
            return lane.key in gather.named
        return lane.key in gather.awaited or lane.parent == gather.owner

    def ended_of(self, gather: Gather) -> int:
        if gather.results is not None:
            return len(gather.results)
        return sum(1 for f in self.forks_of(gather) if (lane := self.lanes.get(f)) and lane.ended)


# -- the renderer ---------------------------------------------------------------------------


class EventRenderer:
    """Feed it stream entries with `show_entry()` (or bare outputs with `show()`) and call
    `finish()` at the end; it keeps each agent's partial line until the line is complete.

    `live` (default: whether the console is an interactive terminal) keeps a live tree of
    the running agents at the bottom of the screen; without it output is plain lines.
    """

    def __init__(self, console: Console | None = None, *, live: bool | None = None) -> None:
        self.console = console or Console(highlight=False)
        if live is None:
            live = self.console.is_terminal and not self.console.is_dumb_terminal
        self.tree = ForkTree()
        self._live_wanted = live
        self._live: Live | None = None
        # The live view is drawn by rich's refresh thread; state changes under the lock.
        self._lock = threading.RLock()
        self._view: RenderableType = Group()
        self._view_stale = False
        self._summarised: set[str] = set()

    # -- input ------------------------------------------------------------------------

    def show_entry(self, entry: StreamEntry) -> None:
        """One stream entry: an event, a response (not printed) or a status change."""
        if entry.output is not None:
            self.show(entry.output)
        elif entry.status is not None:
            with self._lock:
                self._status(entry, entry.status)
                self._touch()

    def show(self, output: ResponseYield | EventYield) -> None:
        """One agent output (responses are not printed: the streamed text says it)."""
        if isinstance(output, EventYield):
            with self._lock:
                self._event(output)
                self._touch()

    def _event(self, output: EventYield) -> None:
        lane = self.tree.from_origin(output.origin)
        event = output.event
        lane.name = lane.name or event.func_name
        if not lane.ended:
            lane.status = RunStatus.RUNNING
        self._place(lane)
        handle = _HANDLERS.get(type(event))
        if isinstance(event, LLMChunkArriveEvent):
            self._stream(lane, chunk_text(event.chunk))
        elif handle is not None:
            handle(self, lane, event)

    def finish(self) -> None:
        """Print every partial line, stop the live view and draw the trees with forks."""
        with self._lock:
            for lane in self.tree.lanes.values():
                self._flush(lane)
            if self._live is not None:
                self._live.stop()
                self._live = None
            for lane in list(self.tree.lanes.values()):
                if lane.fork_id is None:
                    self._summarise(lane.key)

    # -- lines --------------------------------------------------------------------------

    def _prefix(self, lane: Lane, mark: str) -> str:
        if lane.fork_id is None:
            return ""
        depth = lane.depth if lane.depth is not None else 1
        return f"{'  ' * depth}[magenta]{escape(lane.fork_id)}[/] {mark} "

    def _say(self, lane: Lane, markup: str, mark: str = "│") -> None:
        """Print one line of `lane` (wrapped lines keep the lane's indent)."""
        content = Text.from_markup(markup)
        lane.last = content.plain
        prefix = self._prefix(lane, mark)
        if not prefix:
            self.console.print(content)
            return
        lead = Text.from_markup(prefix)
        hang = Text(" " * lead.cell_len)
        width = max(20, self.console.width - lead.cell_len)
        for i, piece in enumerate(content.wrap(self.console, width)):
            piece.rstrip()
            self.console.print(Text.assemble(hang if i else lead, piece), soft_wrap=True)

    def _line(self, lane: Lane, markup: str, mark: str = "│") -> None:
        self._flush(lane)
        self._say(lane, markup, mark)

    def _text_width(self, lane: Lane) -> int:
        prefix = Text.from_markup(self._prefix(lane, "│")).cell_len
        return max(20, self.console.width - prefix - len(_SAYS))

    def _say_text(self, lane: Lane, text: str) -> None:
        lead = f"[bold green]{_SAYS}[/]" if not lane.said else " " * len(_SAYS)
        lane.said = True
        self._say(lane, lead + escape(text))

    def _stream(self, lane: Lane, text: str) -> None:
        if not text:
            return
        lane.streamed = True
        *lines, lane.pending = (lane.pending + text).split("\n")
        for line in lines:
            self._say_text(lane, line)
        width = self._text_width(lane)
        while len(lane.pending) > width:
            cut = lane.pending.rfind(" ", 0, width + 1)
            cut = cut if cut > 0 else width
            self._say_text(lane, lane.pending[:cut])
            lane.pending = lane.pending[cut:].lstrip(" ")

    def _flush(self, lane: Lane) -> None:
        if lane.pending:
            text, lane.pending = lane.pending, ""
            self._say_text(lane, text)

    # -- the fork tree ----------------------------------------------------------------------

    def _place(self, lane: Lane) -> None:
        """Print a fork's opening line once where it sits is known."""
        if lane.placed or lane.depth is None:
            return
        lane.placed = True
        parent = self.tree.lanes.get(lane.parent) if lane.parent else None
        source = f" · from [magenta]{escape(parent.label)}[/]" if parent is not None else ""
        self._say(lane, f"{_status_markup(lane.status)} · depth {lane.depth}{source}", "┌")

    def _status(self, entry: StreamEntry, status: StatusEntry) -> None:
        lane = self.tree.from_status(entry)
        if not status.status.terminal:
            # queued announces a fork, waiting a parent suspended in its gather (whose
            # line says what for): the lane's state, no line of their own
            if not lane.ended and status.status is not RunStatus.QUEUED:
                lane.status = status.status
            self._place(lane)
            return
        detail = status.error or status.abort_reason or ""
        if lane.fork_id is None:
            self._flush(lane)
            self.console.print(
                f"[bold]run {escape(status.run_id)}: {status.status.value}[/] {escape(detail)}"
            )
            self._end(lane, status.status, detail)
            self._summarise_if_done(lane.key)
            return
        self._end(lane, status.status, detail)
        if not lane.placed:
            self._place(lane)
        depth = f" · depth {lane.depth}" if lane.depth is not None else ""
        said = f" · {escape(_short(detail))}" if detail else ""
        self._line(lane, f"{_status_markup(lane.status)}{depth}{said}", "└")
        if lane.root is not None:
            self._summarise_if_done(lane.root)

    def _end(self, lane: Lane, status: RunStatus, detail: str = "") -> None:
        """Record that `lane` ended; advance the gathers waiting for it."""
        was_running = not lane.ended
        lane.status, lane.detail = status, detail or lane.detail
        if not was_running:
            return
        for gather in self.tree.gathers:
            if gather.waiting and not gather.closed and self.tree.awaits(gather, lane):
                self._progress(gather, f"{lane.label} {status.value}")

    def _progress(self, gather: Gather, news: str) -> None:
        owner = self.tree.lanes[gather.owner]
        bar = text_bar(self.tree.ended_of(gather), len(self.tree.forks_of(gather)))
        self._line(owner, f"[blue]⧗ gather {bar}[/] [dim]· {escape(news)}[/]")

    def _waiting(self, lane: Lane, event: CustomEvent) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        forks, calls = _str_list(data.get("waiting_for")), _str_list(data.get("tool_call_ids"))
        lane.status = RunStatus.WAITING
        gather = self.tree.gather_of(lane.key, calls)
        if gather is None:
            gather = Gather(owner=lane.key, call_ids=set(calls))
            self.tree.gathers.append(gather)
        gather.awaited.update(forks)
        gather.waiting = True
        for fork_id in forks:
            child = self.tree.lane(fork_id, fork_id)
            if child.parent is None:
                self.tree.adopt(child, lane.key)
        self._progress(gather, "waiting for " + _short(", ".join(forks), 80))
        for fork_id in forks:
            self._place(self.tree.lanes[fork_id])

    def _gathered(self, lane: Lane, event: ToolCallEndEvent) -> None:
        """A tool call that was (or held) a gather returned: fill its bar."""
        gather = self.tree.gather_of(lane.key, [event.tool_call_id])
        if gather is None or gather.closed:
            return
        results = event.result if isinstance(event.result, dict) else None
        if event.tool_name == GATHER_TOOL and results is not None:
            gather.results = {
                str(fork_id): str(r.get("status")) if isinstance(r, dict) else "?"
                for fork_id, r in results.items()
            }
        gather.closed = True
        ended, total = self.tree.ended_of(gather), len(self.tree.forks_of(gather))
        self._line(lane, f"[green]✓ gather {text_bar(ended, total)}[/] [dim]· returned[/]")

    def _spawned(self, lane: Lane, handle: dict[str, Any]) -> str:
        fork_id, depth = handle.get("fork_id"), handle.get("depth")
        if not isinstance(fork_id, str):
            return escape(_short(handle))
        child = self.tree.lane(fork_id, fork_id)
        if child.parent is None:
            self.tree.adopt(child, lane.key, depth if isinstance(depth, int) else None)
        return f"[magenta]{escape(fork_id)}[/] (depth {child.depth})"

    def _summarise_if_done(self, root_key: str) -> None:
        lanes = self.tree.tree_of(root_key)
        if all(lane.ended for lane in lanes):
            self._summarise(root_key)

    def _summarise(self, root_key: str) -> None:
        """Draw a tree with forks once, with each agent's status."""
        if root_key in self._summarised or len(self.tree.tree_of(root_key)) < 2:
            return
        root = self.tree.lanes.get(root_key)
        if root is None:
            return
        self._summarised.add(root_key)
        self.console.print(self._grow(Tree(_node(root, live=False)), root))

    # -- the live view -------------------------------------------------------------------

    def live_view(self) -> RenderableType:
        """The trees still running: each agent's status and current line, and the bars
        of the gathers waiting (what a terminal shows below the scrolling lines). It
        fits the screen: forks that do not fit are counted on one line, running first."""
        rows = _Rows(max(_LIVE_MIN_ROWS, min(_LIVE_MAX_ROWS, self.console.height - 4)))
        trees: list[RenderableType] = []
        for lane in list(self.tree.lanes.values()):
            if lane.fork_id is None and not all(x.ended for x in self.tree.tree_of(lane.key)):
                rows.left -= 1
                trees.append(self._grow_live(Tree(_node(lane, live=True)), lane, rows))
        return Group(*trees)

    def _grow_live(self, node: Tree, lane: Lane, rows: _Rows) -> Tree:
        for gather in self.tree.gathers:
            if gather.owner == lane.key and gather.waiting and not gather.closed:
                node.add(self._bar(gather))
                rows.left -= 1
        kids = self.tree.children(lane.key)
        shown = _fit(kids, rows.left)
        rows.left -= len(shown)
        for child in kids:
            if child.key in shown:
                self._grow_live(node.add(_node(child, live=True)), child, rows)
        hidden = [kid for kid in kids if kid.key not in shown]
        if hidden:
            running = sum(1 for kid in hidden if not kid.ended)
            more = f"… {len(hidden)} more forks ({running} running, {len(hidden) - running} ended)"
            node.add(Text(more, style="dim"))
            rows.left -= 1
        return node

    def _grow(self, node: Tree, lane: Lane) -> Tree:
        for child in self.tree.children(lane.key):
            self._grow(node.add(_node(child, live=False)), child)
        return node

    def _bar(self, gather: Gather) -> RenderableType:
        ended, total = self.tree.ended_of(gather), len(self.tree.forks_of(gather))
        row = Table.grid(padding=(0, 1))
        row.add_row(
            Text("⧗ gather", style="blue"),
            ProgressBar(total=max(total, 1), completed=ended, width=_BAR_WIDTH),
            Text(f"{ended}/{total} forks ended"),
        )
        return row

    def _touch(self) -> None:
        """Something changed: start the live view, or have it redrawn at its next tick."""
        if not self._live_wanted:
            return
        self._view_stale = True
        if self._live is None:
            self._live = Live(
                console=self.console,
                get_renderable=self._current_view,
                refresh_per_second=8,
                transient=True,
            )
            self._live.start()

    def _current_view(self) -> RenderableType:
        """What rich's refresh thread draws: rebuilt when stale, unless the stream is
        being read right now (it never waits for the lock, so it never holds up output)."""
        if self._view_stale and self._lock.acquire(blocking=False):
            try:
                self._view, self._view_stale = self.live_view(), False
            finally:
                self._lock.release()
        return self._view

    # -- events -----------------------------------------------------------------------------

    def _start(self, lane: Lane, event: ReactStartEvent) -> None:
        session = f" [dim]session {escape(lane.session)}[/]" if lane.fork_id is None else ""
        self._line(lane, f"[bold cyan]▶ {escape(event.func_name)}[/]{session}")

    def _llm_start(self, lane: Lane, event: LLMCallStartEvent) -> None:
        lane.said = lane.streamed = False
        self._line(lane, f"[dim]… model call (iteration {event.iteration})[/]")

    def _llm_end(self, lane: Lane, event: LLMCallEndEvent) -> None:
        self._flush(lane)
        if event.content and not lane.streamed:
            for text in event.content.split("\n"):
                self._say_text(lane, text)
        usage = format_usage(event.usage)
        self._line(lane, f"[dim]  model call done in {event.execution_time:.2f}s, {usage}[/]")

    def _llm_error(self, lane: Lane, event: LLMCallErrorEvent) -> None:
        self._line(lane, f"[bold red]✗ model call failed: {escape(event.error_message)}[/]")

    def _tool_start(self, lane: Lane, event: ToolCallStartEvent) -> None:
        if event.tool_name == GATHER_TOOL:
            named = event.arguments.get("fork_ids")
            call = Gather(owner=lane.key, call_ids={event.tool_call_id})
            call.named = _str_list(named) if isinstance(named, list) else None
            self.tree.gathers.append(call)
        args = ", ".join(f"{k}={_short(v, 40)}" for k, v in event.arguments.items())
        self._line(lane, f"[yellow]→ {escape(event.tool_name)}({escape(args)})[/]")

    def _tool_end(self, lane: Lane, event: ToolCallEndEvent) -> None:
        ms = event.execution_time * 1000
        said = escape(_short(event.result))
        if event.tool_name == SPAWN_TOOL and isinstance(event.result, dict):
            said = self._spawned(lane, event.result)
        elif event.tool_name == GATHER_TOOL and isinstance(event.result, dict):
            said = escape(_short(_gather_summary(event.result)))
        self._line(lane, f"[green]✓ {escape(event.tool_name)}[/] [dim]{ms:.0f} ms[/] → {said}")
        self._gathered(lane, event)
        for child in self.tree.children(lane.key):
            self._place(child)

    def _tool_error(self, lane: Lane, event: ToolCallErrorEvent) -> None:
        self._line(lane, f"[red]✗ {escape(event.tool_name)}: {escape(event.error_message)}[/]")
        gather = self.tree.gather_of(lane.key, [event.tool_call_id])
        if gather is not None:
            gather.closed = True

    def _custom(self, lane: Lane, event: CustomEvent) -> None:
        if event.event_name == GATHER_WAITING:
            self._waiting(lane, event)
            return
        self._line(lane, f"[blue]• {escape(event.event_name)}[/] {escape(_short(event.data))}")

    def _react_end(self, lane: Lane, event: ReactEndEvent) -> None:
        self._line(lane, _describe_end(event))
        status = RunStatus.COMPLETED
        if event.extra.get("aborted"):
            status = RunStatus.ABORTED
        elif event.extra.get("error"):
            status = RunStatus.ERROR
        detail = str(event.extra.get("error") or event.extra.get("abort_reason") or "")
        self._end(lane, status, detail)


@dataclass
class _Rows:
    """Rows of the screen the live view may still use."""

    left: int


def _fit(kids: list[Lane], room: int) -> set[str]:
    """The keys of the forks that fit in `room` rows: all of them, or (with one row kept
    for the count of the others) the running ones first, in fork order."""
    if len(kids) <= room:
        return {kid.key for kid in kids}
    ranked = sorted(kids, key=lambda kid: kid.ended)
    return {kid.key for kid in ranked[: max(room - 1, 0)]}


def _status_markup(status: RunStatus) -> str:
    return f"[{_STATUS_STYLE[status]}]{status.value}[/]"


def _node(lane: Lane, *, live: bool) -> Text:
    """One agent in a tree: label, depth, status and (live) what it is doing."""
    if lane.fork_id is None:
        text = Text.from_markup(f"[bold]root[/] {escape(lane.name)} ")
    else:
        depth = "?" if lane.depth is None else str(lane.depth)
        text = Text.from_markup(f"[magenta]{escape(lane.fork_id)}[/] [dim]d{depth}[/] ")
    text.append_text(Text.from_markup(_status_markup(lane.status)))
    doing = _short(lane.detail, 60)
    if live and lane.status is RunStatus.RUNNING:
        # the newest text of a line still streaming, else the lane's last line
        tail = lane.pending[-60:]
        doing = ("…" + tail if len(tail) < len(lane.pending) else tail) or _short(lane.last, 60)
    if doing:
        text.append(f"  {doing}", style="dim")
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def _gather_summary(results: dict[str, Any]) -> str:
    parts = [
        f"{fork_id} {r.get('status') if isinstance(r, dict) else '?'}"
        for fork_id, r in sorted(results.items(), key=lambda item: _fork_number(item[0]))
    ]
    return ", ".join(parts) or "no forks"


def _describe_end(event: ReactEndEvent) -> str:
    status = "[bold green]■ done[/]"
    if event.extra.get("aborted"):
        status = f"[bold yellow]■ aborted[/] ({escape(str(event.extra.get('abort_reason', '')))})"
    elif event.extra.get("error"):
        status = f"[bold red]■ failed[/] ({escape(str(event.extra.get('error')))})"
    return (
        f"{status} [dim]{event.total_llm_calls} model call(s), {event.total_tool_calls} "
        f"tool call(s), {format_usage(event.total_token_usage)}, "
        f"{event.total_execution_time:.2f}s[/]"
    )


_Handler = Callable[[EventRenderer, Lane, Any], None]

_HANDLERS: dict[type, _Handler] = {
    ReactStartEvent: EventRenderer._start,
    LLMCallStartEvent: EventRenderer._llm_start,
    LLMCallEndEvent: EventRenderer._llm_end,
    LLMCallErrorEvent: EventRenderer._llm_error,
    ToolCallStartEvent: EventRenderer._tool_start,
    ToolCallEndEvent: EventRenderer._tool_end,
    ToolCallErrorEvent: EventRenderer._tool_error,
    CustomEvent: EventRenderer._custom,
    ReactEndEvent: EventRenderer._react_end,
}
