"""Aborting a fork tree on real Redis: the tree's runs waiting in a gather are resumed in
the round trip that sets the tree's flag, before its running runs are told to stop."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from orchestrator.client import Client
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunRequest, RunStatus
from orchestrator.store.connection import Redis
from orchestrator.store.queue import arq_keys, job_id
from orchestrator.store.runs import RunStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


async def _waiting_root(redis: Redis, keys: Keys) -> RunRecord:
    """A root run as a worker leaves it once its turn has suspended in a gather."""
    run_id, session_id = uuid.uuid4().hex, uuid.uuid4().hex
    request = RunRequest(
        run_id=run_id, session_id=session_id, agent="tests.agents:echo", message="fan out"
    )
    record = RunRecord(
        run_id=run_id,
        session_id=session_id,
        agent=request.agent,
        status=RunStatus.WAITING,
        request=request.model_dump(mode="json"),
        waiting_for=[f"{run_id}.fork_1"],
    )
    assert await RunStore(redis, keys).create(record)
    return record


async def test_an_abort_queues_the_trees_waiting_runs_first_and_before_it_pushes_the_stop(
    client: Client, redis: Redis, keys: Keys
) -> None:
    """The waiting run's next segment is queued (its wake-up sent) after the flag is set
    and before the abort is pushed, ahead of the jobs of its running forks (arq keeps a
    job in the queue while it runs): a worker picks it up at once, not after one refused
    pick per running fork and not behind their loop's work of ending, and the segment
    sees the flag at its start."""
    record = await _waiting_root(redis, keys)
    jid = job_id(record.run_id, 1, 1)
    fork = RunRequest(
        run_id=f"{record.run_id}.fork_1",
        session_id=record.session_id,
        agent=record.agent,
        message="leaf",
    )
    running = job_id(fork.run_id, 1)
    await client.queue.enqueue(fork)  # a running fork's job, still in the queue
    pubsub: Any = redis.pubsub()
    try:
        await pubsub.subscribe(keys.wake(), keys.aborts())
        await client.abort(record.session_id, "stop the tree", run_id=record.run_id)
        heard: list[tuple[bytes, bytes]] = []
        deadline = asyncio.get_running_loop().time() + 5.0
        while len(heard) < 2 and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                heard.append((message["channel"], message["data"]))
        assert len(heard) == 2, heard
        (woken, wake), (pushed, push) = heard
        assert (woken, wake) == (keys.wake().encode(), jid.encode())
        assert pushed == keys.aborts().encode()
        assert json.loads(push) == {
            "session": record.session_id,
            "root": record.run_id,
            "reason": "stop the tree",
        }
        queued = await redis.zrange(keys.queue(), 0, -1)
        assert queued == [jid.encode(), running.encode()]
        assert await client.flags.get_for(record.session_id, record.run_id) == "stop the tree"
    finally:
        await pubsub.aclose()
        await redis.delete(*arq_keys(jid), *arq_keys(running))
