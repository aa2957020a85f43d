"""A turn's last batch rides in its end's script, on the real Redis: the store tests of
tests/unit/test_store_end_batch.py again (fence, marker, order), and a run on a real
worker whose stream reads as before (each run's events gap-free and in order, then its
response, then its terminal entry)."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.store.connection import Redis
from tests.unit.test_store_end_batch import (
    test_an_end_of_a_run_that_ended_already_still_writes_the_batch,
    test_an_end_that_conflicts_with_another_write_writes_the_batch_once,
    test_an_end_whose_batch_a_newer_attempt_fenced_off_writes_nothing,
    test_an_end_whose_checkpoint_a_newer_attempt_saved_writes_nothing,
    test_an_end_without_a_batch_is_unchanged,
    test_take_last_waits_for_the_batch_in_flight_and_takes_the_rest,
    test_the_end_keeps_the_checkpoints_attempt_whoever_saved_it,
    test_the_end_marks_its_batch_and_its_terminal_entry,
    test_the_last_batch_is_written_by_the_end_before_the_terminal_entry,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

__all__ = [
    "test_an_end_of_a_run_that_ended_already_still_writes_the_batch",
    "test_an_end_that_conflicts_with_another_write_writes_the_batch_once",
    "test_an_end_whose_batch_a_newer_attempt_fenced_off_writes_nothing",
    "test_an_end_whose_checkpoint_a_newer_attempt_saved_writes_nothing",
    "test_an_end_without_a_batch_is_unchanged",
    "test_take_last_waits_for_the_batch_in_flight_and_takes_the_rest",
    "test_the_end_keeps_the_checkpoints_attempt_whoever_saved_it",
    "test_the_end_marks_its_batch_and_its_terminal_entry",
    "test_the_last_batch_is_written_by_the_end_before_the_terminal_entry",
]


@pytest.fixture
def store_redis(redis: Redis) -> Any:
    return redis
