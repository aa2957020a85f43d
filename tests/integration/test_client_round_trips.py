"""What a submit costs in round trips to Redis, through a proxy that delays every reply
(a network between the client and Redis)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from orchestrator.client import Client, connect
from orchestrator.errors import SessionNotOwned
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis
from orchestrator.store.queue import arq_keys, job_id
from tests.integration.test_arq_jobs import DroppingProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

AGENT = "tests.integration.agents_for_tests:assistant"
DELAY_S = 0.25


class SlowClient:
    """A client talking to the real Redis through a proxy that delays replies when told;
    the arq keys of the runs it submitted are deleted after the test."""

    def __init__(self, client: Client, proxy: DroppingProxy) -> None:
        self.client = client
        self.proxy = proxy
        self.run_ids: list[str] = []


@pytest.fixture
async def slow(redis_url: str, keys: Keys, redis: Redis) -> AsyncIterator[SlowClient]:
    proxy = DroppingProxy(urlsplit(redis_url).port or 6379)
    url = await proxy.start()
    client = await connect(url, settings=Settings(redis_url=url, key_prefix=keys.prefix))
    made = SlowClient(client, proxy)
    try:
        yield made
    finally:
        await client.close()
        await proxy.stop()
        for run_id in made.run_ids:
            await redis.delete(*arq_keys(job_id(run_id, 1)))


async def test_a_submit_into_a_new_session_is_one_round_trip(
    slow: SlowClient, redis: Redis, keys: Keys
) -> None:
    """Its claim of the session rides with the record and the job."""
    client, proxy = slow.client, slow.proxy
    await client.ping()  # the connection is open
    proxy.reply_delay_s = DELAY_S
    started = time.monotonic()
    run = await client.submit(AGENT, "hello", tenant="acme")
    took = time.monotonic() - started
    slow.run_ids.append(run.run_id)
    proxy.reply_delay_s = 0.0
    assert took < 1.6 * DELAY_S, f"{took:.2f} s: more than one round trip"
    # Claimed for the tenant, indexed, recorded and queued all the same.
    assert (await client.sessions.owner(run.session_id)) is not None
    assert await client.sessions.runs(run.session_id) == [run.run_id]
    assert (await run.status()).tenant == "acme"
    assert await redis.zscore(keys.queue(), job_id(run.run_id, 1)) is not None
    with pytest.raises(SessionNotOwned):
        await client.submit(AGENT, "mine now", session_id=run.session_id, tenant="globex")
