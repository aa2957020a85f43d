"""`orchestrator worker --check`: are workers alive on this Redis?"""

from __future__ import annotations

import time

from orchestrator.client import connect
from orchestrator.settings import Settings


async def check_workers(settings: Settings) -> int:
    """Print the live workers; exit status 0 if there is at least one, 1 otherwise."""
    client = await connect(settings=settings)
    async with client:
        workers = await client.workers.list()
        depth = await client.queue.depth()
    now = time.time()
    for info in workers:
        age = now - float(info.get("at", now))
        print(
            f"worker {info.get('worker_id')} pid={info.get('pid')} running={info.get('running')}"
            f"/{info.get('concurrency')} last beat {age:.1f}s ago agents={info.get('agents')}"
        )
    print(f"{len(workers)} live worker(s); {depth} job(s) queued")
    return 0 if workers else 1
