"""Run models: strict job payloads, record timings, status entries."""

from __future__ import annotations

import json

import pytest

from orchestrator.errors import PayloadError
from orchestrator.events import ResponseYield
from orchestrator.runs import RunRecord, RunRequest, RunStatus, StatusEntry, StreamEntry


def _request(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "run_id": "r1",
        "session_id": "s1",
        "agent": "pkg.agents:chat",
        "message": "hi",
        "submitted_at": 1.0,
    }
    base.update(over)
    return base


def test_run_request_round_trips_through_json() -> None:
    request = RunRequest.model_validate(
        _request(args={"x": 1}, history=[{"role": "user", "content": "a"}])
    )
    assert RunRequest.from_json(request.to_json()) == request
    assert json.loads(request.to_json())["v"] == 1


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"surprise": 1}, "surprise"),
        ({"v": 2}, "v"),
        ({"agent": "no_colon"}, "agent"),
        ({"session_id": "a{b}"}, "session_id"),
        ({"attempt": 0}, "attempt"),
        ({"args": []}, "args"),
    ],
)
def test_malformed_run_request_is_refused_with_a_clear_error(
    change: dict[str, object], complaint: str
) -> None:
    with pytest.raises(PayloadError, match=complaint):
        RunRequest.from_json(json.dumps(_request(**change)))


def test_run_request_that_is_not_json_is_a_payload_error() -> None:
    with pytest.raises(PayloadError):
        RunRequest.from_json(b"\x80garbage")
    with pytest.raises(PayloadError):
        RunRequest.from_dict([1, 2])


def test_run_status_knows_which_states_are_terminal() -> None:
    assert {s for s in RunStatus if s.terminal} == {
        RunStatus.COMPLETED,
        RunStatus.ERROR,
        RunStatus.ABORTED,
    }


def test_run_record_timings() -> None:
    record = RunRecord(run_id="r", session_id="s", agent="m:f", submitted_at=10.0)
    assert record.queue_ms is None
    assert record.run_ms is None
    record = record.model_copy(update={"started_at": 10.25, "finished_at": 11.0})
    assert record.queue_ms == pytest.approx(250.0)
    assert record.run_ms == pytest.approx(750.0)
    assert record.timings == {"queue_ms": pytest.approx(250.0), "run_ms": pytest.approx(750.0)}


def test_run_record_ignores_unknown_fields_from_newer_writers() -> None:
    raw = RunRecord(run_id="r", session_id="s", agent="m:f").model_dump()
    raw["from_the_future"] = True
    assert RunRecord.model_validate(raw).run_id == "r"


def test_stream_entry_holds_an_output_or_a_status() -> None:
    status = StatusEntry(run_id="r", status=RunStatus.ERROR, error="boom")
    assert StatusEntry.model_validate_json(status.to_json()) == status
    entry = StreamEntry(id="1-0", run_id="r", kind="response", output=ResponseYield(response="x"))
    assert isinstance(entry.output, ResponseYield)
