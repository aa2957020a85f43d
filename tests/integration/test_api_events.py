"""Server-Sent Events of runs and sessions: framing, resuming with Last-Event-ID, keep-alives."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from orchestrator.keys import Keys
from orchestrator.store.connection import Redis
from tests.fixtures_api import AGENT, FORKING_AGENT, ApiFactory, parse_sse

pytestmark = pytest.mark.integration


async def submit(api: httpx.AsyncClient, message: str, **extra: object) -> dict[str, Any]:
    answer = await api.post("/v1/runs", json={"agent": AGENT, "message": message, **extra})
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    return body


def streamed_text(messages: list[dict[str, Any]]) -> str:
    text = []
    for message in messages:
        output = message["data"].get("output") or {}
        event = output.get("event") or {}
        choices = (event.get("chunk") or {}).get("choices") or [{}]
        if event.get("event_type") == "llm_chunk_arrive":
            text.append((choices[0].get("delta") or {}).get("content") or "")
    return "".join(text)


async def test_run_events_stream_live_and_end_after_the_final_status(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    run = await submit(api, "weather in two cities?")
    answer = await api.get(f"/v1/runs/{run['run_id']}/events")  # opened while queued
    assert answer.headers["content-type"].startswith("text/event-stream")
    messages = parse_sse(answer.text)

    assert all(m["id"] == m["data"]["id"] for m in messages)
    assert [m["event"] for m in messages] == [m["data"]["kind"] for m in messages]
    assert messages[-1]["event"] == "status"
    assert messages[-1]["data"]["status"]["status"] == "completed"
    assert any(m["event"] == "response" for m in messages)
    types = [m["data"]["output"]["event"]["event_type"] for m in messages if m["event"] == "event"]
    assert types[0] == "react_start"
    assert {"tool_call_start", "tool_call_end", "custom_event", "react_end"} <= set(types)
    assert streamed_text(messages).endswith("Paris and Tokyo are both sunny today.")


async def test_resuming_with_last_event_id_loses_and_repeats_nothing(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    run = await submit(api, "weather in two cities?")
    url = f"/v1/runs/{run['run_id']}/events"
    everything = parse_sse((await api.get(url)).text)
    ids = [m["id"] for m in everything]
    assert len(ids) == len(set(ids)) > 10

    cut = len(ids) // 3
    resumed = parse_sse((await api.get(url, headers={"Last-Event-ID": ids[cut - 1]})).text)
    assert [m["id"] for m in resumed] == ids[cut:]

    by_query = parse_sse((await api.get(url, params={"from": ids[cut]})).text)
    assert [m["id"] for m in by_query] == ids[cut + 1 :]
    # A reconnecting EventSource sends the header; it wins over a stale ?from=.
    both = await api.get(url, params={"from": ids[0]}, headers={"Last-Event-ID": ids[-2]})
    assert [m["id"] for m in parse_sse(both.text)] == ids[-1:]


async def test_a_quiet_stream_sends_keepalives_until_the_run_ends(make_api: ApiFactory) -> None:
    api = make_api(sse_keepalive_s=0.05)
    run = await submit(api, "nobody will run this")  # no worker: it stays queued

    async def abort_soon() -> None:
        await asyncio.sleep(0.3)
        await api.post(f"/v1/runs/{run['run_id']}/abort", json={"reason": "bored"})

    aborter = asyncio.create_task(abort_soon())
    answer = await api.get(f"/v1/runs/{run['run_id']}/events")
    await aborter
    assert answer.text.count(": keep-alive") >= 3
    final = parse_sse(answer.text)[-1]
    assert final["data"]["status"]["status"] == "aborted"
    assert final["data"]["status"]["abort_reason"] == "bored"


async def test_session_events_cover_every_run_of_the_session(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    first = await submit(api, "hello")
    await api.get(f"/v1/runs/{first['run_id']}/events")  # returns once the run has ended
    second = await submit(api, "hello again", session_id=first["session_id"])
    await api.get(f"/v1/runs/{second['run_id']}/events")

    answer = await api.get(f"/v1/sessions/{first['session_id']}/events", params={"follow": "false"})
    messages = parse_sse(answer.text)
    statuses = [
        (m["data"]["run_id"], m["data"]["status"]["status"])
        for m in messages
        if m["event"] == "status"
    ]
    assert (first["run_id"], "completed") in statuses
    assert (second["run_id"], "completed") in statuses
    tail = await api.get(
        f"/v1/sessions/{first['session_id']}/events",
        params={"follow": "false"},
        headers={"Last-Event-ID": messages[-2]["id"]},
    )
    assert [m["id"] for m in parse_sse(tail.text)] == [messages[-1]["id"]]


async def test_an_ended_run_whose_stream_expired_still_reports_how_it_ended(
    make_api: ApiFactory, worker: object, redis: Redis, keys: Keys
) -> None:
    api = make_api()
    run = await submit(api, "hello")
    await api.get(f"/v1/runs/{run['run_id']}/events")
    await redis.delete(keys.events(run["session_id"]))  # as if its retention ran out

    messages = parse_sse((await api.get(f"/v1/runs/{run['run_id']}/events")).text)
    assert len(messages) == 1
    assert "id" not in messages[0]  # not a stream entry: nothing to resume after
    assert messages[0]["data"]["status"]["status"] == "completed"


async def test_a_malformed_resume_id_is_400(make_api: ApiFactory) -> None:
    api = make_api()
    run = await submit(api, "x")
    answer = await api.get(f"/v1/runs/{run['run_id']}/events", headers={"Last-Event-ID": "abc"})
    assert answer.status_code == 400
    assert "stream id" in answer.json()["message"]


async def test_a_run_stream_carries_its_forks_and_ends_after_the_last_of_them(
    make_api: ApiFactory, worker: object
) -> None:
    """Opened while the run is queued, and again after it ended: both carry every fork's
    events and end with the run's own final status once the whole tree has ended."""
    api = make_api()
    answer = await api.post(
        "/v1/runs", json={"agent": FORKING_AGENT, "message": "check the cities"}
    )
    run = answer.json()
    live = parse_sse((await api.get(f"/v1/runs/{run['run_id']}/events")).text)
    replay = parse_sse((await api.get(f"/v1/runs/{run['run_id']}/events")).text)
    for messages in (live, replay):
        ends = [
            m["data"]["output"]["origin"]
            for m in messages
            if m["event"] == "event" and m["data"]["output"]["event"]["event_type"] == "react_end"
        ]
        assert sorted(str(o["fork_id"]) for o in ends) == ["None", "fork_1", "fork_2", "fork_3"]
        fork_ends = [
            m["data"]
            for m in messages
            if m["event"] == "status" and m["data"]["run_id"] != run["run_id"]
        ]
        assert {d["status"]["status"] for d in fork_ends} >= {"queued", "completed"}
        assert all(d["root_run_id"] == run["run_id"] for d in fork_ends)
        assert messages[-1]["data"]["run_id"] == run["run_id"]
        assert messages[-1]["data"]["status"]["status"] == "completed"
    assert [m["id"] for m in live] == [m["id"] for m in replay]
