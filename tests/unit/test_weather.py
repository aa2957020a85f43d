"""Redis failing is weather: the pieces that make a worker wait it out, on fakeredis.

Write fencing of replaced attempts, lease hand-backs, an idempotent run end, the job
envelope check, and the once-per-outage log of a task's backoff.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.errors import StaleAttempt, StoreUnavailable
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus
from orchestrator.settings import Settings
from orchestrator.store.checkpoints import CheckpointStore
from orchestrator.store.jsonserial import JobDecoder
from orchestrator.store.lifecycle import end_run
from orchestrator.store.runs import LeaseTable, RunStore
from orchestrator.store.streams import EventPublisher, StreamReader
from tests.fixtures_redis import event_output
from workers.outage import Outage, until_available

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def keys() -> Keys:
    return Keys("t")


def _publisher(redis: Any, keys: Keys, attempt: int) -> EventPublisher:
    return EventPublisher(redis, keys, session_id="s1", run_id="call-1", attempt=attempt)


async def test_a_replaced_attempt_cannot_publish_after_its_successor_took_over(
    fake_redis: Any, keys: Keys
) -> None:
    first = _publisher(fake_redis, keys, 1)
    assert await first.take_over() is None
    for i in range(3):
        first.publish(event_output(i))
    await first.flush()

    second = _publisher(fake_redis, keys, 2)
    assert await second.take_over() == 2  # numbering goes on after the last event
    first.publish(event_output(3))
    with pytest.raises(StaleAttempt):
        await first.flush()
    second.publish(event_output(3))
    await second.flush()

    entries = await StreamReader(fake_redis, keys).read("s1")
    seqs = [e.output.origin.event_seq for e in entries if e.output is not None]
    assert seqs == [0, 1, 2, 3]
    with pytest.raises(StaleAttempt):
        await first.take_over()


async def test_a_checkpoint_of_a_replaced_attempt_is_refused(fake_redis: Any, keys: Keys) -> None:
    checkpoints = CheckpointStore(fake_redis, keys)
    await checkpoints.save("s1", "call-1", attempt=1, state=b"one")
    await _publisher(fake_redis, keys, 2).take_over()

    with pytest.raises(StaleAttempt):
        await checkpoints.save("s1", "call-1", attempt=1, state=b"zombie")
    assert await checkpoints.load("s1", "call-1") == b"one"
    await checkpoints.save("s1", "call-1", attempt=2, state=b"two")
    assert await checkpoints.load("s1", "call-1") == b"two"


async def test_an_abandoned_publisher_writes_nothing_more(fake_redis: Any, keys: Keys) -> None:
    publisher = _publisher(fake_redis, keys, 1)
    publisher.publish(event_output(0))
    publisher.abandon()
    assert await StreamReader(fake_redis, keys).read("s1") == []


async def test_a_handed_back_lease_expires_at_once_and_is_not_counted_as_lost(
    fake_redis: Any, keys: Keys
) -> None:
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("r1", attempt=1, worker_id="w", ttl_s=60)
    assert await leases.hand_back("r1", 1)
    # A background renewal never takes a handed-back lease back.
    assert not await leases.renew("r1", attempt=1, worker_id="w", ttl_s=60, extend_only=True)

    assert await leases.expired() == ["r1"]
    assert await leases.claim_expired("r1") == 1
    assert await leases.handbacks("r1") == 1
    assert not await leases.hand_back("r1", 1)  # claimed: this attempt owns nothing


async def test_a_lost_lease_is_not_counted_as_a_hand_back(fake_redis: Any, keys: Keys) -> None:
    leases = LeaseTable(fake_redis, keys)
    assert await leases.renew("r1", attempt=1, worker_id="w", ttl_s=0.001)
    assert await leases.claim_expired("r1", now_ms=10**15) == 1
    assert await leases.handbacks("r1") == 0
    assert not await leases.renew("r1", attempt=1, worker_id="w", ttl_s=60, extend_only=True)


async def test_ending_a_run_again_completes_it_once(fake_redis: Any, keys: Keys) -> None:
    runs = RunStore(fake_redis, keys)
    record = RunRecord(
        run_id="r1", session_id="s1", agent="m:f", status=RunStatus.RUNNING, attempt=2
    )
    await runs.create(record)
    settings = Settings()

    async def end(attempt: int) -> RunRecord | None:
        return await end_run(
            fake_redis,
            keys,
            settings,
            run_id="r1",
            session_id="s1",
            status=RunStatus.COMPLETED,
            attempt=attempt,
            response="ok",
        )

    assert await end(1) is None  # not this attempt's run to end
    assert (await runs.get("r1")).status is RunStatus.RUNNING
    first, again = await end(2), await end(2)
    assert first is not None
    assert again is not None
    entries = await StreamReader(fake_redis, keys).read("s1")
    assert [e.status.status for e in entries if e.status] == [RunStatus.COMPLETED]


@pytest.mark.parametrize(
    "body",
    [
        b"\x80\x04 not json",
        b"[1, 2]",
        json.dumps({"t": 1, "a": [], "k": {}, "et": 1}).encode(),
        json.dumps({"t": "x", "f": "run_turn", "a": [], "k": {}, "et": 1}).encode(),
        json.dumps({"t": 1, "f": "run_turn", "a": {}, "k": {}, "et": 1}).encode(),
        json.dumps({"t": 1, "f": "run_turn", "a": [], "k": [], "et": "now"}).encode(),
    ],
)
def test_a_broken_job_envelope_is_refused_and_counted(body: bytes) -> None:
    decoder = JobDecoder()
    with pytest.raises(ValueError, match=r"."):
        decoder(body)
    assert decoder.malformed == 1


def test_a_good_job_envelope_decodes() -> None:
    decoder = JobDecoder()
    envelope = {"t": None, "f": "run_turn", "a": [{"run_id": "r"}], "k": {}, "et": 1}
    assert decoder(json.dumps(envelope).encode()) == envelope
    assert decoder.malformed == 0


async def test_an_outage_is_logged_once_and_retried_with_capped_backoff() -> None:
    outage = Outage("test", first_delay_s=0.001, max_delay_s=0.004)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 6:
            raise StoreUnavailable("Redis unreachable during test")
        return "ok"

    with capture_logs() as logs:
        assert await until_available(flaky, outage) == "ok"
    events = [entry["event"] for entry in logs]
    assert events.count("redis unavailable; retrying until it is back") == 1
    assert events.count("redis reachable again") == 1
    assert outage.outages == 1
    assert not outage.down
    assert [outage.failed(StoreUnavailable("x")) for _ in range(4)][-1] == 0.004
