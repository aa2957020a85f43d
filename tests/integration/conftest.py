"""Fixtures shared by the integration tests that drive worker subprocesses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.client import Client, connect
from orchestrator.keys import Keys
from orchestrator.settings import Settings
from orchestrator.store.connection import Redis


@pytest.fixture
async def client(redis_url: str, keys: Keys, redis: Redis) -> AsyncIterator[Client]:
    """A client on the real Redis under the test's own key prefix. It depends on `redis`
    so the prefix is cleaned up after everything else has stopped."""
    made = await connect(redis_url, settings=Settings(redis_url=redis_url, key_prefix=keys.prefix))
    try:
        yield made
    finally:
        await made.close()
