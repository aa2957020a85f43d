"""CheckpointStore on fakeredis: save/load/delete and fencing by attempt."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import RunError, StaleAttempt
from orchestrator.keys import Keys
from orchestrator.store.checkpoints import CheckpointStore

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def store(fake_redis: Any, keys: Keys) -> CheckpointStore:
    return CheckpointStore(fake_redis, keys)


async def test_saved_state_loads_back(store: CheckpointStore) -> None:
    assert await store.load("s", "c") is None
    await store.save("s", "c", attempt=1, state=b'{"step": 1}')
    await store.save("s", "c", attempt=1, state=b'{"step": 2}')
    assert await store.load("s", "c") == b'{"step": 2}'
    assert await store.attempt("s", "c") == 1


async def test_a_later_attempt_takes_over(store: CheckpointStore) -> None:
    await store.save("s", "c", attempt=1, state=b"one")
    await store.save("s", "c", attempt=2, state=b"two")
    assert await store.load("s", "c") == b"two"


async def test_an_older_attempt_is_fenced_off(store: CheckpointStore) -> None:
    await store.save("s", "c", attempt=2, state=b"two")
    with pytest.raises(StaleAttempt) as caught:
        await store.save("s", "c", attempt=1, state=b"zombie")
    assert isinstance(caught.value, RunError)
    assert (caught.value.attempt, caught.value.current_attempt) == (1, 2)
    assert await store.load("s", "c") == b"two"


async def test_delete_drops_the_state_but_keeps_the_fence(
    store: CheckpointStore, fake_redis: Any, keys: Keys
) -> None:
    await store.save("s", "c", attempt=3, state=b"x")
    await store.delete("s", "c")
    assert await store.load("s", "c") is None
    with pytest.raises(StaleAttempt):
        await store.save("s", "c", attempt=2, state=b"zombie")
    assert await fake_redis.ttl(keys.checkpoint("s", "c")) > 0


async def test_checkpoints_of_different_calls_are_independent(store: CheckpointStore) -> None:
    await store.save("s", "a", attempt=5, state=b"a")
    await store.save("s", "b", attempt=1, state=b"b")
    assert await store.load("s", "b") == b"b"


async def test_a_ttl_can_be_given(store: CheckpointStore, fake_redis: Any, keys: Keys) -> None:
    await store.save("s", "c", attempt=1, state=b"x", ttl_s=60)
    assert 0 < await fake_redis.ttl(keys.checkpoint("s", "c")) <= 60
    await store.save("s", "c", attempt=1, state=b"y")
    assert await fake_redis.ttl(keys.checkpoint("s", "c")) == -1
