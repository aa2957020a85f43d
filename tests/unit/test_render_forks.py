"""`--follow` and `tail` render a forking run as an indented tree with gather bars.

The entries below are what a reader gets for a run whose root spawns three forks and
gathers them; fork_1 forks once more (fork_4, depth 2) and gathers it; fork_2's model call
fails. fork_1 and fork_3 stream at the same time, their chunks split mid-word.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from typing import Any

from rich.console import Console

from orchestrator.cli.render import EventRenderer, text_bar
from orchestrator.events import (
    CustomEvent,
    EventOrigin,
    EventYield,
    LLMCallEndEvent,
    LLMCallErrorEvent,
    LLMCallStartEvent,
    LLMChunkArriveEvent,
    ReactEndEvent,
    ReActEvent,
    ReactStartEvent,
    ResponseYield,
    ToolCallEndEvent,
    ToolCallStartEvent,
)
from orchestrator.runs import RunStatus, StatusEntry, StreamEntry

ROOT = "run1"
SESSION = "sess1"
ERROR = "scripted: HTTP 400 from http://127.0.0.1:9/v1/chat/completions: scripted fault"

# fork id -> (parent fork id or None for the root, depth, place among the parent's forks)
FORKS: dict[str, tuple[str | None, int, int]] = {
    "fork_1": (None, 1, 1),
    "fork_2": (None, 1, 2),
    "fork_3": (None, 1, 3),
    "fork_4": ("fork_1", 2, 1),
}


def run_id(fork: str | None) -> str:
    return ROOT if fork is None else f"{ROOT}.{fork}"


class Script:
    """Builds stream entries as workers write them: ids in order, event_seq per agent,
    origins as `EventOrigin` carries them for the root and for each fork."""

    def __init__(self) -> None:
        self.entries: list[StreamEntry] = []
        self._seq: Counter[str | None] = Counter()

    def _id(self) -> str:
        return f"1-{len(self.entries)}"

    def origin(self, fork: str | None) -> EventOrigin:
        seq = self._seq[fork]
        self._seq[fork] += 1
        if fork is None:
            return EventOrigin(session_id=SESSION, agent_call_id=ROOT, event_seq=seq)
        parent, depth, place = FORKS[fork]
        return EventOrigin(
            session_id=SESSION,
            agent_call_id=run_id(fork),
            event_seq=seq,
            parent_agent_call_id=run_id(parent),
            fork_id=fork,
            fork_depth=depth,
            fork_seq=place,
            memory_key=f"forker::fork::{fork.removeprefix('fork_')}",
            tool_name="selfref_fork_spawn",
            tool_call_id=f"spawn-{fork}",
        )

    def event(self, fork: str | None, event: ReActEvent) -> None:
        output = EventYield(event=event, origin=self.origin(fork))
        self.entries.append(
            StreamEntry(
                id=self._id(), run_id=run_id(fork), root_run_id=ROOT, kind="event", output=output
            )
        )

    def response(self, fork: str | None, text: str) -> None:
        output = ResponseYield(response=text, origin=self.origin(fork))
        self.entries.append(
            StreamEntry(
                id=self._id(), run_id=run_id(fork), root_run_id=ROOT, kind="response", output=output
            )
        )

    def status(self, fork: str | None, status: RunStatus, error: str | None = None) -> None:
        entry = StatusEntry(run_id=run_id(fork), status=status, error=error)
        self.entries.append(
            StreamEntry(
                id=self._id(), run_id=run_id(fork), root_run_id=ROOT, kind="status", status=entry
            )
        )

    # -- event shorthands ------------------------------------------------------------------

    def start(self, fork: str | None) -> None:
        self.event(fork, ReactStartEvent(func_name="forker"))

    def model_call(self, fork: str | None, iteration: int = 0) -> None:
        self.event(fork, LLMCallStartEvent(func_name="forker", iteration=iteration))

    def chunk(self, fork: str | None, text: str) -> None:
        chunk = {"choices": [{"index": 0, "delta": {"content": text}}]}
        self.event(fork, LLMChunkArriveEvent(func_name="forker", chunk=chunk))

    def model_done(self, fork: str | None, content: str) -> None:
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        self.event(fork, LLMCallEndEvent(func_name="forker", content=content, usage=usage))

    def call(self, fork: str | None, call_id: str, tool: str, **arguments: Any) -> None:
        event = ToolCallStartEvent(tool_name=tool, tool_call_id=call_id, arguments=arguments)
        self.event(fork, event)

    def returned(self, fork: str | None, call_id: str, tool: str, result: Any) -> None:
        event = ToolCallEndEvent(tool_name=tool, tool_call_id=call_id, result=result)
        self.event(fork, event)

    def spawned(self, fork: str | None, call_id: str, child: str) -> None:
        _parent, depth, _place = FORKS[child]
        handle = {"fork_id": child, "parent_fork_id": fork, "depth": depth, "status": "running"}
        self.returned(fork, call_id, "selfref_fork_spawn", handle)

    def waiting(self, fork: str | None, forks: list[str], call_id: str) -> None:
        data = {"waiting_for": forks, "tool_call_ids": [call_id]}
        self.event(fork, CustomEvent(event_name="fork_gather_waiting", data=data))

    def gathered(self, fork: str | None, call_id: str, statuses: dict[str, str]) -> None:
        results = {f: {"fork_id": f, "status": s, "response": None} for f, s in statuses.items()}
        self.returned(fork, call_id, "selfref_fork_gather_all", results)

    def end(self, fork: str | None, text: str, **extra: Any) -> None:
        self.event(fork, ReactEndEvent(func_name="forker", final_response=text, extra=extra))
        self.response(fork, text)


def forking_run() -> list[StreamEntry]:
    s = Script()
    s.start(None)
    s.model_call(None)
    for piece in ["Splitting ", "the work.\nThree", " parts."]:
        s.chunk(None, piece)
    s.model_done(None, "Splitting the work.\nThree parts.")
    for i in range(3):
        s.call(None, f"root-spawn-{i}", "selfref_fork_spawn", message=f"part {i}")
    s.call(None, "root-gather", "selfref_fork_gather_all")
    for fork in ("fork_1", "fork_2", "fork_3"):
        s.status(fork, RunStatus.QUEUED)
    for i, fork in enumerate(("fork_1", "fork_2", "fork_3")):
        s.spawned(None, f"root-spawn-{i}", fork)
    s.waiting(None, ["fork_1", "fork_2", "fork_3"], "root-gather")
    s.status(None, RunStatus.WAITING)
    # three forks start at once; fork_1 and fork_3 stream concurrently
    for fork in ("fork_1", "fork_2", "fork_3"):
        s.start(fork)
        s.model_call(fork)
    s.chunk("fork_1", "Part 0 ne")
    s.chunk("fork_3", "part an")
    s.event("fork_2", LLMCallErrorEvent(func_name="forker", error_message=ERROR))
    s.end("fork_2", "", error=ERROR)
    s.chunk("fork_1", "eds help.\nForking on")
    s.status("fork_2", RunStatus.ERROR, error=ERROR)
    s.chunk("fork_3", "swer")
    s.chunk("fork_1", "ce more.")
    s.model_done("fork_3", "part answer")
    s.model_done("fork_1", "Part 0 needs help.\nForking once more.")
    s.end("fork_3", "part answer")
    s.call("fork_1", "f1-spawn", "selfref_fork_spawn", message="leaf")
    s.call("fork_1", "f1-gather", "selfref_fork_gather_all")
    s.status("fork_3", RunStatus.COMPLETED)
    s.status("fork_4", RunStatus.QUEUED)
    s.spawned("fork_1", "f1-spawn", "fork_4")
    s.waiting("fork_1", ["fork_4"], "f1-gather")
    s.status("fork_1", RunStatus.WAITING)
    s.start("fork_4")
    s.model_call("fork_4")
    s.chunk("fork_4", "leaf answer")
    s.model_done("fork_4", "leaf answer")
    s.end("fork_4", "leaf answer")
    s.status("fork_4", RunStatus.COMPLETED)
    s.gathered("fork_1", "f1-gather", {"fork_4": "completed"})
    s.model_call("fork_1", iteration=1)
    s.chunk("fork_1", "part 0 done")
    s.model_done("fork_1", "part 0 done")
    s.end("fork_1", "part 0 done")
    s.status("fork_1", RunStatus.COMPLETED)
    s.gathered(
        None, "root-gather", {"fork_1": "completed", "fork_2": "error", "fork_3": "completed"}
    )
    s.model_call(None, iteration=1)
    s.chunk(None, "All parts gathered.")
    s.model_done(None, "All parts gathered.")
    s.end(None, "All parts gathered.")
    s.status(None, RunStatus.COMPLETED)
    return s.entries


def recording_console(width: int = 100, **options: Any) -> Console:
    return Console(record=True, width=width, file=io.StringIO(), highlight=False, **options)


def render(entries: list[StreamEntry], width: int = 100) -> list[str]:
    console = recording_console(width)
    renderer = EventRenderer(console)
    for entry in entries:
        renderer.show_entry(entry)
    renderer.finish()
    return console.export_text().splitlines()


def lines_of(lines: list[str], label: str) -> list[str]:
    return [line for line in lines if line.lstrip().startswith(f"{label} ")]


# -- tests ----------------------------------------------------------------------------------


def test_each_fork_opens_and_closes_its_lane_with_its_id_depth_and_status() -> None:
    lines = render(forking_run())
    assert "  fork_1 ┌ queued · depth 1 · from root" in lines
    assert "  fork_2 ┌ queued · depth 1 · from root" in lines
    assert "  fork_3 ┌ queued · depth 1 · from root" in lines
    assert "    fork_4 ┌ queued · depth 2 · from fork_1" in lines
    assert "  fork_1 └ completed · depth 1" in lines
    assert "  fork_3 └ completed · depth 1" in lines
    assert "    fork_4 └ completed · depth 2" in lines
    (closed,) = [line for line in lines if line.startswith("  fork_2 └")]
    assert closed.startswith("  fork_2 └ error · depth 1 · scripted: HTTP 400")


def test_every_line_of_a_fork_is_indented_by_its_depth() -> None:
    lines = render(forking_run())
    for fork, (_parent, depth, _place) in FORKS.items():
        own = lines_of(lines, fork)
        assert len(own) >= 4, f"{fork} has too few lines: {own}"
        assert all(line.startswith("  " * depth + fork + " ") for line in own), own
    # the root's own lines are not indented, as before forks existed
    assert "▶ forker session sess1" in lines
    assert "  fork_1 │ ▶ forker" in lines
    failed = "  fork_2 │ ✗ model call failed: scripted: HTTP 400"
    assert any(line.startswith(failed) for line in lines)


def test_agents_streaming_at_once_print_whole_lines_each() -> None:
    lines = render(forking_run())
    assert "  fork_1 │ assistant: Part 0 needs help." in lines
    assert "  fork_1 │            Forking once more." in lines
    assert "  fork_3 │ assistant: part answer" in lines
    assert "    fork_4 │ assistant: leaf answer" in lines
    assert not any("Part 0 ne" in line and "needs" not in line for line in lines)


def test_a_long_streamed_line_wraps_at_a_word_inside_the_lane() -> None:
    s = Script()
    s.start(None)
    s.status("fork_1", RunStatus.QUEUED)
    s.start("fork_1")
    s.model_call("fork_1")
    words = [f"word{i}" for i in range(40)]
    for word in words:
        s.chunk("fork_1", word + " ")
    lines = render(s.entries, width=60)
    own = [line for line in lines_of(lines, "fork_1") if "word" in line]
    assert len(own) > 3
    assert all(len(line) <= 60 for line in own)
    assert all(line.startswith("  fork_1 │ ") for line in own)
    assert " ".join(" ".join(line.split()[2:]) for line in own).split()[1:] == words


def test_the_gather_bar_advances_as_forks_end_and_fills_when_it_returns() -> None:
    lines = render(forking_run())
    bars = [line for line in lines if re.match(r"^[⧗✓] gather ", line)]
    assert bars == [
        f"⧗ gather {text_bar(0, 3)} · waiting for fork_1, fork_2, fork_3",
        f"⧗ gather {text_bar(1, 3)} · fork_2 error",
        f"⧗ gather {text_bar(2, 3)} · fork_3 completed",
        f"⧗ gather {text_bar(3, 3)} · fork_1 completed",
        f"✓ gather {text_bar(3, 3)} · returned",
    ]
    nested = [line for line in lines_of(lines, "fork_1") if "gather [" in line]
    assert nested == [
        f"  fork_1 │ ⧗ gather {text_bar(0, 1)} · waiting for fork_4",
        f"  fork_1 │ ⧗ gather {text_bar(1, 1)} · fork_4 completed",
        f"  fork_1 │ ✓ gather {text_bar(1, 1)} · returned",
    ]
    assert "✓ selfref_fork_gather_all 0 ms → fork_1 completed, fork_2 error, fork_3 completed" in (
        lines
    )


def test_text_bar_fills_in_proportion() -> None:
    assert text_bar(0, 4, width=8) == "[░░░░░░░░] 0/4"
    assert text_bar(1, 4, width=8) == "[██░░░░░░] 1/4"
    assert text_bar(4, 4, width=8) == "[████████] 4/4"
    assert text_bar(0, 0, width=4) == "[████] 0/0"


def test_the_root_answer_and_run_status_print_as_before() -> None:
    lines = render(forking_run())
    assert "assistant: Splitting the work." in lines
    assert "assistant: All parts gathered." in lines
    assert "run run1: completed" in [line.rstrip() for line in lines]
    assert not any("waiting" in line and "gather" not in line for line in lines), "no noise"
    assert lines.index("assistant: All parts gathered.") > lines.index(
        f"✓ gather {text_bar(3, 3)} · returned"
    )


def test_the_ended_tree_is_drawn_with_each_agents_status() -> None:
    lines = render(forking_run())
    start = lines.index("root forker completed")
    assert start > [line.rstrip() for line in lines].index("run run1: completed")
    tree = [line.rstrip() for line in lines[start + 1 : start + 5]]
    assert tree[0] == "├── fork_1 d1 completed"
    assert tree[1] == "│   └── fork_4 d2 completed"
    assert tree[2].startswith("├── fork_2 d1 error  scripted: HTTP 400 from")
    assert tree[3] == "└── fork_3 d1 completed"


def test_a_run_without_forks_has_no_fork_lanes_or_tree() -> None:
    s = Script()
    s.start(None)
    s.model_call(None)
    s.chunk(None, "Hello ")
    s.chunk(None, "there.")
    s.model_done(None, "Hello there.")
    s.end(None, "Hello there.")
    s.status(None, RunStatus.COMPLETED)
    lines = render(s.entries)
    assert lines[0] == "▶ forker session sess1"
    assert "assistant: Hello there." in lines
    assert not any("fork" in line.replace("forker", "") for line in lines)
    assert not any(line.startswith("root ") for line in lines)


def test_forks_spawned_by_tool_code_are_placed_from_their_parents_gather() -> None:
    """No spawn ToolCallEnd: the waiting event and the forks' own events place them, and
    the tool's return closes the gather."""
    s = Script()
    s.start(None)
    s.call(None, "code", "fan_out", count=2)
    s.status("fork_1", RunStatus.QUEUED)
    s.status("fork_2", RunStatus.QUEUED)
    s.waiting(None, ["fork_1", "fork_2"], "code")
    s.start("fork_1")
    s.end("fork_1", "one")
    s.status("fork_1", RunStatus.COMPLETED)
    s.status("fork_2", RunStatus.ABORTED)
    s.returned(None, "code", "fan_out", {"gathered": 2})
    s.end(None, "done")
    s.status(None, RunStatus.COMPLETED)
    lines = render(s.entries)
    assert "  fork_1 ┌ queued · depth 1 · from root" in lines
    assert "  fork_2 ┌ queued · depth 1 · from root" in lines
    assert "  fork_2 └ aborted · depth 1" in lines
    assert f"⧗ gather {text_bar(2, 2)} · fork_2 aborted" in lines
    assert f"✓ gather {text_bar(2, 2)} · returned" in lines


def test_outputs_without_status_entries_still_end_forks() -> None:
    """`Run.stream()` (the demo) yields outputs only: a fork's ReactEnd ends it."""
    console = recording_console()
    renderer = EventRenderer(console)
    for entry in forking_run():
        if entry.output is not None:
            renderer.show(entry.output)
    renderer.finish()
    lines = console.export_text().splitlines()
    assert f"⧗ gather {text_bar(1, 3)} · fork_2 error" in lines
    assert f"✓ gather {text_bar(3, 3)} · returned" in lines
    assert "root forker completed" in lines


def test_plain_output_has_no_cursor_control() -> None:
    out = io.StringIO()
    renderer = EventRenderer(Console(file=out, width=100))
    for entry in forking_run():
        renderer.show_entry(entry)
    renderer.finish()
    assert "fork_4" in out.getvalue()
    assert "\x1b" not in out.getvalue()


def test_the_live_view_shows_running_agents_their_partial_lines_and_gather_bars() -> None:
    entries = forking_run()
    cut = next(i for i, e in enumerate(entries) if e.status and e.status.status.value == "error")
    renderer = EventRenderer(recording_console())
    for entry in entries[: cut + 1]:
        renderer.show_entry(entry)
    screen = recording_console(force_terminal=True)
    screen.print(renderer.live_view())
    view = screen.export_text().splitlines()
    assert view[0].startswith("root forker waiting")
    assert view[1].startswith("├── ⧗ gather ━")
    assert view[1].endswith("1/3 forks ended")
    assert view[2] == "├── fork_1 d1 running  Forking on"
    assert view[3].startswith("├── fork_2 d1 error  scripted: HTTP 400")
    assert view[4] == "└── fork_3 d1 running  part an"

    for entry in entries[cut + 1 :]:
        renderer.show_entry(entry)
    screen.print(renderer.live_view())
    assert screen.export_text() == "", "an ended tree leaves the live view"


def test_on_a_terminal_lines_scroll_above_a_live_view_that_is_gone_at_the_end() -> None:
    out = io.StringIO()
    renderer = EventRenderer(Console(file=out, width=100, height=30, force_terminal=True))
    for entry in forking_run():
        renderer.show_entry(entry)
    renderer.finish()
    raw = out.getvalue()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "    fork_4 ┌ queued · depth 2 · from fork_1\n" in text
    assert "  fork_1 │ assistant: Part 0 needs help.\n" in text
    assert "root forker completed\n├── fork_1 d1 completed\n" in text
    assert raw.count("\x1b[?25l") == 1, "the live view hides the cursor while it runs"
    assert raw.rstrip().endswith("\x1b[?25h"), "and shows it again at the end"
