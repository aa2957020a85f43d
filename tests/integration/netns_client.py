"""The client host of the multi-host test, run inside its own network namespace:

    python -m tests.integration.netns_client --redis URL --prefix P --agent A --message M

It submits one run, tails the run's whole fork tree from the session stream (one JSON line
per entry on stdout) and, every 0.3 s, prints the run records (status, worker) so the test
outside can see where forks run. It exits 0 once the root and every fork it saw announced
have ended (printing the final records), 2 if that takes longer than --timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from orchestrator.client import Client, connect
from orchestrator.errors import StoreError
from orchestrator.events import EventYield
from orchestrator.runs import StreamEntry
from orchestrator.settings import Settings


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _line(entry: StreamEntry) -> dict[str, Any]:
    line: dict[str, Any] = {"type": "entry", "id": entry.id, "run": entry.run_id}
    line["kind"] = entry.kind
    if isinstance(entry.output, EventYield):
        line["call"] = entry.output.origin.agent_call_id
        line["seq"] = entry.output.origin.event_seq
    if entry.status is not None:
        line["status"] = entry.status.status.value
    return line


async def _records(client: Client) -> list[list[Any]]:
    runs = await client.runs.list(include_forks=True, limit=200)
    return [[r.run_id, r.status.value, r.worker_id, r.attempt] for r in runs]


async def _report(client: Client) -> None:
    while True:
        try:
            _say(type="runs", runs=await _records(client))
        except StoreError as exc:
            _say(type="error", error=str(exc))
        await asyncio.sleep(0.3)


async def _tail(client: Client, session_id: str, root: str) -> None:
    announced: set[str] = {root}
    ended: set[str] = set()
    async for entry in client.reader.tail(session_id, follow=True):
        _say(**_line(entry))
        if entry.status is None:
            continue
        announced.add(entry.run_id)
        if entry.status.status.terminal:
            ended.add(entry.run_id)
        if root in ended and announced <= ended:
            return


async def main(args: argparse.Namespace) -> int:
    settings = Settings(redis_url=args.redis, key_prefix=args.prefix)
    client = await connect(settings=settings)
    async with client:
        async with asyncio.timeout(args.timeout):
            workers = await client.workers.list()
            while len(workers) < args.wait_workers:
                await asyncio.sleep(0.1)
                workers = await client.workers.list()
        _say(type="workers", hosts=sorted(str(w.get("host")) for w in workers))
        run = await client.submit(args.agent, args.message)
        _say(type="submitted", run_id=run.run_id, session_id=run.session_id)
        reporter = asyncio.create_task(_report(client))
        try:
            async with asyncio.timeout(args.timeout):
                await _tail(client, run.session_id, run.run_id)
        except TimeoutError:
            _say(type="timeout", runs=await _records(client))
            return 2
        finally:
            reporter.cancel()
        _say(type="done", runs=await _records(client))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--message", required=True)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--wait-workers", type=int, default=1, help="live workers first")
    sys.exit(asyncio.run(main(parser.parse_args())))
