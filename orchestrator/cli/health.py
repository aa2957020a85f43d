"""`orchestrator worker --check`: are workers alive on this Redis, and are their keys?"""

from __future__ import annotations

import time

from orchestrator.client import connect
from orchestrator.llm.benched import read_benched_keys
from orchestrator.llm.key_pool import format_wait
from orchestrator.settings import Settings


async def check_workers(settings: Settings) -> int:
    """Print the live workers, with the API keys each has benched after a 401/403;
    exit status 0 if there is at least one worker, 1 otherwise (benched keys are shown,
    not failed on: the worker is alive and serves its other keys and models)."""
    client = await connect(settings=settings)
    async with client:
        workers = await client.workers.list()
        depth = await client.queue.depth()
    now = time.time()
    benched_total = 0
    for info in workers:
        age = now - float(info.get("last_beat", now))
        print(
            f"worker {info.get('worker_id')} pid={info.get('pid')} running={info.get('running')}"
            f"/{info.get('concurrency')} last beat {age:.1f}s ago agents={info.get('agents')}"
        )
        for key in read_benched_keys(info, now):
            benched_total += 1
            provider = f" ({key.provider})" if key.provider else ""
            print(
                f"  benched: model {key.model}{provider} {key.label} "
                f"(HTTP {key.status}), tried again in {format_wait(key.retry_in_s)}"
            )
    print(
        f"{len(workers)} live worker(s); {depth} job(s) queued; {benched_total} API key(s) benched"
    )
    return 0 if workers else 1
