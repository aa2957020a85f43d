"""What the CLI's client commands do (submit, tail, abort, runs), on the Python API."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.cli.render import EventRenderer, format_usage
from orchestrator.client import Client, connect
from orchestrator.errors import ConfigError, RunNotFound
from orchestrator.runs import RunStatus, StreamEntry
from orchestrator.settings import Settings


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


def _print_entry(entry: StreamEntry, renderer: EventRenderer | None) -> None:
    if renderer is None:
        print(entry_json(entry), flush=True)
    else:
        renderer.show_entry(entry)


async def submit(settings: Settings, args: argparse.Namespace) -> int:
    client = await connect(settings=settings)
    async with client:
        run = await client.submit(
            args.agent,
            args.message,
            history=_load_history(args.history),
            session_id=args.session,
        )
        if not args.follow:
            ids = {"run_id": run.run_id, "session_id": run.session_id}
            print(json.dumps(ids) if args.json else f"run {run.run_id} session {run.session_id}")
            return 0
        renderer = None if args.json else EventRenderer()
        try:
            async for entry in run.entries():
                _print_entry(entry, renderer)
        finally:
            if renderer is not None:
                renderer.finish()
        result = await run.result()
        if renderer is not None:
            renderer.console.print(f"[dim]{format_usage(result.usage)}[/]")
        return 0 if result.status is RunStatus.COMPLETED else 1


async def _resolve_session(client: Client, ident: str) -> tuple[str, str | None]:
    try:
        record = await client.runs.get(ident)
    except RunNotFound:
        return ident, None
    return record.session_id, record.run_id


async def tail(settings: Settings, args: argparse.Namespace) -> int:
    client = await connect(settings=settings)
    async with client:
        session_id, run_id = await _resolve_session(client, args.id)
        renderer = None if args.json else EventRenderer()
        # A run's tail ends once the run and every fork of it have ended (not at the
        # first fork that ends); a session's tail follows until interrupted.
        entries = client.reader.tail(
            session_id,
            after=args.from_id,
            run_id=run_id,
            follow=not args.no_follow,
            stop_at_terminal=run_id is not None,
        )
        try:
            async for entry in entries:
                _print_entry(entry, renderer)
        finally:
            if renderer is not None:
                renderer.finish()
    return 0


async def abort(settings: Settings, args: argparse.Namespace) -> int:
    client = await connect(settings=settings)
    async with client:
        session_id, run_id = await _resolve_session(client, args.id)
        if run_id is None:
            stopped = await client.abort_session(session_id, args.reason)
            runs = len(stopped)
            print(f"abort requested for session {session_id}: {runs} run(s) ({args.reason})")
        else:
            await client.abort(session_id, args.reason, run_id=run_id)
            print(f"abort requested for run {run_id} and its forks ({args.reason})")
    return 0


async def runs(settings: Settings, args: argparse.Namespace) -> int:
    client = await connect(settings=settings)
    async with client:
        status = RunStatus(args.status) if args.status else None
        records = await client.list_runs(status=status, agent=args.agent, limit=args.limit)
    if args.json:
        for record in records:
            print(record.model_dump_json(exclude={"messages", "request"}))
        return 0
    table = Table("run", "status", "agent", "queued ms", "run ms", "tokens")
    for r in records:
        tokens = str((r.usage or {}).get("total_tokens", ""))
        table.add_row(r.run_id, r.status.value, r.agent, _ms(r.queue_ms), _ms(r.run_ms), tokens)
    Console().print(table)
    return 0


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}"
