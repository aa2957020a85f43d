"""What the CLI's client commands do (submit, tail, abort, runs), on the Python API.

Each is a coroutine with plain arguments, callable as library code. Output is rendered
with rich (the cli extra), or printed as one JSON object per line (`as_json`), which
needs nothing beyond the library.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.client import Client, connect
from orchestrator.errors import ConfigError, RunNotFound
from orchestrator.runs import RunStatus, StreamEntry
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.cli.render import EventRenderer

__all__ = ["abort", "entry_json", "runs", "submit", "tail"]


def _load_history(path: str | None) -> list[dict[str, Any]] | None:
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read history from {path}: {exc}") from exc
    if not isinstance(data, list):
        raise ConfigError(f"{path}: the history must be a JSON list of messages")
    return data


def entry_json(entry: StreamEntry) -> str:
    body: dict[str, Any] = {"id": entry.id, "run_id": entry.run_id, "kind": entry.kind}
    if entry.output is not None:
        body["output"] = entry.output.model_dump(mode="json")
    if entry.status is not None:
        body["status"] = entry.status.model_dump(mode="json")
    return json.dumps(body, ensure_ascii=False)


def _renderer(as_json: bool) -> EventRenderer | None:
    if as_json:
        return None
    # Imported here: rich (the cli extra) is needed only for rendered output.
    from orchestrator.cli.render import EventRenderer

    return EventRenderer()


def _print_entry(entry: StreamEntry, renderer: EventRenderer | None) -> None:
    if renderer is None:
        print(entry_json(entry), flush=True)
    else:
        renderer.show_entry(entry)


async def submit(
    settings: Settings,
    agent: str,
    message: str,
    *,
    session_id: str | None = None,
    history_file: str | None = None,
    follow: bool = False,
    as_json: bool = False,
) -> int:
    """Submit one turn of `agent`; with `follow`, show it until it ends. 0 if it completed
    (or was only submitted), 1 otherwise."""
    client = await connect(settings=settings)
    async with client:
        run = await client.submit(
            agent, message, history=_load_history(history_file), session_id=session_id
        )
        if not follow:
            ids = {"run_id": run.run_id, "session_id": run.session_id}
            print(json.dumps(ids) if as_json else f"run {run.run_id} session {run.session_id}")
            return 0
        renderer = _renderer(as_json)
        try:
            async for entry in run.entries():
                _print_entry(entry, renderer)
        finally:
            if renderer is not None:
                renderer.finish()
        result = await run.result()
        if renderer is not None:
            from orchestrator.cli.render import format_usage  # rich: see _renderer

            renderer.console.print(f"[dim]{format_usage(result.usage)}[/]")
        return 0 if result.status is RunStatus.COMPLETED else 1


async def _resolve_session(client: Client, ident: str) -> tuple[str, str | None]:
    try:
        record = await client.runs.get(ident)
    except RunNotFound:
        return ident, None
    return record.session_id, record.run_id


async def tail(
    settings: Settings,
    ident: str,
    *,
    after: str | None = None,
    follow: bool = True,
    as_json: bool = False,
) -> int:
    """Show the events of a run (`ident` a run id) or a session, after stream id `after`."""
    client = await connect(settings=settings)
    async with client:
        session_id, run_id = await _resolve_session(client, ident)
        renderer = _renderer(as_json)
        # A run's tail ends once the run and every fork of it have ended (not at the
        # first fork that ends); a session's tail follows until interrupted.
        entries = client.reader.tail(
            session_id,
            after=after,
            run_id=run_id,
            follow=follow,
            stop_at_terminal=run_id is not None,
        )
        try:
            async for entry in entries:
                _print_entry(entry, renderer)
        finally:
            if renderer is not None:
                renderer.finish()
    return 0


async def abort(settings: Settings, ident: str, reason: str = "user_abort") -> int:
    """Abort a run and its forks (`ident` a run id) or every run of a session."""
    client = await connect(settings=settings)
    async with client:
        session_id, run_id = await _resolve_session(client, ident)
        if run_id is None:
            stopped = await client.abort_session(session_id, reason)
            runs = len(stopped)
            print(f"abort requested for session {session_id}: {runs} run(s) ({reason})")
        else:
            await client.abort(session_id, reason, run_id=run_id)
            print(f"abort requested for run {run_id} and its forks ({reason})")
    return 0


async def runs(
    settings: Settings,
    *,
    status: str | None = None,
    agent: str | None = None,
    limit: int = 20,
    as_json: bool = False,
) -> int:
    """List the latest runs (optionally in one status, of one agent)."""
    client = await connect(settings=settings)
    async with client:
        wanted = RunStatus(status) if status else None
        records = await client.list_runs(status=wanted, agent=agent, limit=limit)
    if as_json:
        for record in records:
            print(record.model_dump_json(exclude={"messages", "request"}))
        return 0
    # Imported here: rich (the cli extra) is needed only for the table.
    from rich.console import Console
    from rich.table import Table

    table = Table("run", "status", "agent", "queued ms", "run ms", "tokens")
    for r in records:
        tokens = str((r.usage or {}).get("total_tokens", ""))
        table.add_row(r.run_id, r.status.value, r.agent, _ms(r.queue_ms), _ms(r.run_ms), tokens)
    Console().print(table)
    return 0


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"


async def batch(
    settings: Settings, batch_id: str, *, follow: bool = False, as_json: bool = False
) -> int:
    """Print a batch's progress (counts, usage, cost); with `follow`, until it finishes."""
    client = await connect(settings=settings)
    async with client:
        while True:
            progress = await client.batch_progress(batch_id)
            if as_json:
                view = progress.model_dump() | {
                    "pending": progress.pending,
                    "finished": progress.finished,
                }
                print(json.dumps(view), flush=True)
            else:
                print(
                    f"batch {batch_id}: {progress.done + progress.failed}/{progress.total} "
                    f"({progress.done} done, {progress.failed} failed, {progress.pending} "
                    f"pending); tokens {progress.input_tokens} in / {progress.output_tokens} "
                    f"out; cost ${progress.cost:.4f}",
                    flush=True,
                )
            if not follow or progress.finished:
                return 0
            await asyncio.sleep(1.0)
