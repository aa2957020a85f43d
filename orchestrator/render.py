"""Terminal rendering of an agent's live output (demo, `submit --follow`, `tail`).

Streaming text is printed as it arrives; tool calls, their timings and results, custom
events and token totals are printed as lines around it. Forks are indented by depth.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape

from orchestrator.events import (
    CustomEvent,
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


class EventRenderer:
    """Feed it outputs with `show()`; it keeps track of partial lines."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self._mid_line = False

    def _indent(self, output: EventYield) -> str:
        return "  " * output.origin.fork_depth

    def _line(self, text: str) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False
        self.console.print(text)

    def show(self, output: ResponseYield | EventYield) -> None:
        if isinstance(output, ResponseYield):
            return
        event = output.event
        pad = self._indent(output)
        who = f"[magenta]{output.origin.fork_id}[/] " if output.origin.fork_id else ""
        if isinstance(event, LLMChunkArriveEvent):
            text = chunk_text(event.chunk)
            if text:
                if not self._mid_line:
                    self.console.print(f"{pad}{who}[bold green]assistant:[/] ", end="")
                self.console.print(escape(text), end="", soft_wrap=True)
                self._mid_line = True
            return
        line = self._describe(event, output)
        if line:
            self._line(f"{pad}{who}{line}")

    def _describe(self, event: Any, output: EventYield) -> str | None:
        describe = _DESCRIBERS.get(type(event))
        return describe(self, event, output) if describe else None

    def _start(self, event: ReactStartEvent, output: EventYield) -> str:
        session = output.origin.session_id
        return f"[bold cyan]▶ {escape(event.func_name)}[/] [dim]session {session}[/]"

    def _llm_start(self, event: LLMCallStartEvent, output: EventYield) -> str:
        return f"[dim]… model call (iteration {event.iteration})[/]"

    def _llm_end(self, event: LLMCallEndEvent, output: EventYield) -> str:
        if event.content and not self._mid_line and not event.extra.get("streamed", True):
            self.console.print(f"[bold green]assistant:[/] {escape(event.content)}")
        return (
            f"[dim]  model call done in {event.execution_time:.2f}s, {format_usage(event.usage)}[/]"
        )

    def _llm_error(self, event: LLMCallErrorEvent, output: EventYield) -> str:
        return f"[bold red]✗ model call failed: {escape(event.error_message)}[/]"

    def _tool_start(self, event: ToolCallStartEvent, output: EventYield) -> str:
        args = ", ".join(f"{k}={_short(v, 40)}" for k, v in event.arguments.items())
        return f"[yellow]→ {escape(event.tool_name)}({escape(args)})[/]"

    def _tool_end(self, event: ToolCallEndEvent, output: EventYield) -> str:
        ms = event.execution_time * 1000
        return (
            f"[green]✓ {escape(event.tool_name)}[/] [dim]{ms:.0f} ms[/] → "
            f"{escape(_short(event.result))}"
        )

    def _tool_error(self, event: ToolCallErrorEvent, output: EventYield) -> str:
        return f"[red]✗ {escape(event.tool_name)}: {escape(event.error_message)}[/]"

    def _custom(self, event: CustomEvent, output: EventYield) -> str:
        return f"[blue]• {escape(event.event_name)}[/] {escape(_short(event.data))}"

    def _end(self, event: ReactEndEvent, output: EventYield) -> str:
        return self._describe_end(event)

    def _describe_end(self, event: ReactEndEvent) -> str:
        status = "[bold green]■ done[/]"
        if event.extra.get("aborted"):
            status = (
                f"[bold yellow]■ aborted[/] ({escape(str(event.extra.get('abort_reason', '')))})"
            )
        elif event.extra.get("error"):
            status = f"[bold red]■ failed[/] ({escape(str(event.extra.get('error')))})"
        return (
            f"{status} [dim]{event.total_llm_calls} model call(s), {event.total_tool_calls} "
            f"tool call(s), {format_usage(event.total_token_usage)}, "
            f"{event.total_execution_time:.2f}s[/]"
        )

    def finish(self) -> None:
        if self._mid_line:
            self.console.print()
            self._mid_line = False


_DESCRIBERS: dict[type, Any] = {
    ReactStartEvent: EventRenderer._start,
    LLMCallStartEvent: EventRenderer._llm_start,
    LLMCallEndEvent: EventRenderer._llm_end,
    LLMCallErrorEvent: EventRenderer._llm_error,
    ToolCallStartEvent: EventRenderer._tool_start,
    ToolCallEndEvent: EventRenderer._tool_end,
    ToolCallErrorEvent: EventRenderer._tool_error,
    CustomEvent: EventRenderer._custom,
    ReactEndEvent: EventRenderer._end,
}
