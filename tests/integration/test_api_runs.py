"""The HTTP API's run routes against real Redis and a real worker: submit, read, list, abort."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.fixtures_api import AGENT, ApiFactory

pytestmark = pytest.mark.integration


async def wait_for_status(api: httpx.AsyncClient, run_id: str, *statuses: str) -> dict[str, Any]:
    for _ in range(200):
        body: dict[str, Any] = (await api.get(f"/v1/runs/{run_id}")).json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.025)
    raise AssertionError(f"run {run_id} never reached {statuses}: {body}")


async def test_a_submitted_run_completes_with_result_usage_and_timings(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    answer = await api.post("/v1/runs", json={"agent": AGENT, "message": "weather please"})
    assert answer.status_code == 202, answer.text
    submitted = answer.json()
    assert submitted["status"] == "queued"
    assert submitted["links"]["events"] == f"/v1/runs/{submitted['run_id']}/events"

    run = await wait_for_status(api, submitted["run_id"], "completed", "error")
    assert run["status"] == "completed", run
    assert run["response"] == "Paris and Tokyo are both sunny today."
    assert run["usage"]["total_tokens"] > 0
    assert run["timings"]["queue_ms"] is not None
    assert run["timings"]["run_ms"] > 0
    assert run["messages"][-1]["role"] == "assistant"


async def submit(api: httpx.AsyncClient, message: str = "hi", **extra: object) -> dict[str, Any]:
    answer = await api.post("/v1/runs", json={"agent": AGENT, "message": message, **extra})
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_runs_list_filters_by_status_and_agent_and_pages(make_api: ApiFactory) -> None:
    api = make_api()
    ids = [(await submit(api, f"m{i}"))["run_id"] for i in range(3)]
    aborted = await api.post(f"/v1/runs/{ids[0]}/abort", json={"reason": "not needed"})
    assert aborted.json()["status"] == "aborted"

    queued = (await api.get("/v1/runs", params={"status": "queued"})).json()
    assert [r["run_id"] for r in queued["runs"]] == [ids[2], ids[1]]  # newest first
    only_aborted = (await api.get("/v1/runs", params={"status": "aborted"})).json()["runs"]
    assert [(r["run_id"], r["abort_reason"]) for r in only_aborted] == [(ids[0], "not needed")]
    other_agent = await api.get("/v1/runs", params={"agent": "some.module:other"})
    assert other_agent.json()["runs"] == []

    first = (await api.get("/v1/runs", params={"limit": 2})).json()
    assert len(first["runs"]) == 2
    assert first["next_offset"] == 2
    rest = (await api.get("/v1/runs", params={"limit": 2, "offset": 2})).json()
    assert [r["run_id"] for r in rest["runs"]] == [ids[0]]
    assert rest["next_offset"] is None


async def test_unknown_run_is_404_with_an_error_body(make_api: ApiFactory) -> None:
    api = make_api()
    for answer in (
        await api.get("/v1/runs/nope"),
        await api.post("/v1/runs/nope/abort"),
        await api.get("/v1/runs/nope/events"),
    ):
        assert answer.status_code == 404
        assert answer.json()["error"] == "not_found"


async def test_aborting_a_running_run_ends_it_aborted_and_a_second_abort_is_409(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    run = await submit(api, "answer slowly please")
    await wait_for_status(api, run["run_id"], "running")
    answer = await api.post(f"/v1/runs/{run['run_id']}/abort", json={"reason": "enough"})
    assert answer.status_code == 202
    assert answer.json()["abort_requested"] is True

    ended = await wait_for_status(api, run["run_id"], "aborted", "completed", "error")
    assert ended["status"] == "aborted"
    again = await api.post(f"/v1/runs/{run['run_id']}/abort")
    assert again.status_code == 409
    assert "already ended" in again.json()["message"]


async def test_a_second_turn_continues_the_session_with_history(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    first = await submit(api, "hello")
    done = await wait_for_status(api, first["run_id"], "completed")
    second = await submit(
        api, "hello again", session_id=first["session_id"], history=done["messages"]
    )
    assert second["session_id"] == first["session_id"]
    again = await wait_for_status(api, second["run_id"], "completed")
    assert len(again["messages"]) > len(done["messages"])
