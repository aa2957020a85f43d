"""tests/unit/test_store_end_edges.py's store tests again, on the real Redis: a first
checkpoint written by the end still expires, and a run ended elsewhere keeps its
terminal entry last."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.store.connection import Redis
from tests.unit.test_store_end_edges import (
    test_a_checkpoint_flushed_before_the_end_expires,
    test_a_first_checkpoint_written_by_the_end_still_expires,
    test_a_run_ended_elsewhere_keeps_its_terminal_entry_last,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

__all__ = [
    "test_a_checkpoint_flushed_before_the_end_expires",
    "test_a_first_checkpoint_written_by_the_end_still_expires",
    "test_a_run_ended_elsewhere_keeps_its_terminal_entry_last",
]


@pytest.fixture
def store_redis(redis: Redis) -> Any:
    """The real Redis (per-test key prefix)."""
    return redis
