"""Fixtures shared by the integration tests that drive worker subprocesses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from orchestrator.client import Client, connect
from orchestrator.keys import Keys
from orchestrator.settings import Settings


@pytest.fixture
async def client(redis_url: str, keys: Keys) -> AsyncIterator[Client]:
    """A client on the real Redis under the test's own key prefix (deleted by `keys` once
    everything using it has stopped)."""
    made = await connect(redis_url, settings=Settings(redis_url=redis_url, key_prefix=keys.prefix))
    try:
        yield made
    finally:
        await made.close()
