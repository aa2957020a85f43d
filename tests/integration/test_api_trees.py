"""The dashboard's read endpoints on a real fork tree (real Redis, in-process worker):
the tree summary, one agent's lane on demand, batched SSE, and the cluster view."""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest

from orchestrator.keys import Keys
from orchestrator.store.connection import Redis
from tests.fixtures_api import FORK_PACES, FORKING_AGENT, ApiFactory, bearer, parse_sse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}


async def finished_fork_tree(api: httpx.AsyncClient) -> dict[str, Any]:
    """A root that spawns one fork per city, waits for them in its gather and completes."""
    answer = await api.post(
        "/v1/runs", json={"agent": FORKING_AGENT, "message": "Please check the cities."}
    )
    assert answer.status_code == 202, answer.text
    run: dict[str, Any] = answer.json()
    await api.get(f"/v1/runs/{run['run_id']}/events")  # returns once the tree has ended
    return run


async def test_the_tree_summarises_every_agent_from_the_records_and_the_stream(
    make_api: ApiFactory, worker: object, redis: Redis, keys: Keys
) -> None:
    api = make_api()
    run = await finished_fork_tree(api)
    root_id = run["run_id"]

    tree = (await api.get(f"/v1/runs/{root_id}/tree")).json()

    agents = tree["agents"]
    assert agents[0]["run_id"] == root_id
    forks = agents[1:]
    assert [f["seq"] for f in forks] == list(range(1, len(FORK_PACES) + 1))
    assert {f["parent_run_id"] for f in forks} == {root_id}
    assert all(a["status"] == "completed" for a in agents)
    assert tree["totals"]["by_status"]["completed"] == len(FORK_PACES) + 1
    assert agents[0]["forks"] == len(FORK_PACES)
    # The root waited in its gather until the slowest fork had ended.
    ((began, ended),) = agents[0]["waits"]
    slowest = max(f["finished_at"] for f in forks)
    assert began < slowest <= ended + 0.5
    records = [(await api.get(f"/v1/runs/{a['run_id']}")).json() for a in agents]
    assert tree["totals"]["tokens"] == sum(r["usage"]["total_tokens"] for r in records)
    # Every stream entry of the session is one agent's; the summary ends at the last.
    stream = await redis.xrange(keys.events(run["session_id"]))
    assert tree["totals"]["entries"] == len(stream)
    assert tree["last_id"] == stream[-1][0].decode()
    assert sum(a["entries"] for a in agents) == len(stream)


async def test_a_lane_is_one_agents_entries_in_full_or_as_a_lane_draws_them(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    run = await finished_fork_tree(api)
    tree = (await api.get(f"/v1/runs/{run['run_id']}/tree")).json()
    fork = tree["agents"][1]

    full = (await api.get(f"/v1/runs/{fork['run_id']}/lane")).json()
    # A lane lists the agent's outputs; the tree's `entries` counts the stream entries
    # it wrote, several outputs each since stream entries hold a batch (`outputs`).
    assert len(full["entries"]) == fork["outputs"]
    assert fork["entries"] < fork["outputs"]
    assert {e["run_id"] for e in full["entries"]} == {fork["run_id"]}
    assert full["entries"][0]["id"] == fork["first_id"]
    assert full["next_after"] is None

    compact = (await api.get(f"/v1/runs/{fork['run_id']}/lane?view=compact")).json()
    types = [e["output"]["event"]["event_type"] for e in compact["entries"] if e["kind"] == "event"]
    assert "llm_chunk_arrive" not in types  # every model call ended: its text is in the end
    ends = [
        e for e in compact["entries"] if e["kind"] == "event" and "content" in e["output"]["event"]
    ]
    assert any(e["output"]["event"]["content"] for e in ends)
    assert len(compact["entries"]) < len(full["entries"])

    ids = []
    after = None
    while True:
        page = (
            await api.get(
                f"/v1/runs/{fork['run_id']}/lane",
                params={"limit": 3, **({"after": after} if after else {})},
            )
        ).json()
        ids += [e["id"] for e in page["entries"]]
        after = page["next_after"]
        if after is None:
            break
    assert ids == [e["id"] for e in full["entries"]]


async def test_another_tenants_tree_and_lanes_are_404(make_api: ApiFactory, worker: object) -> None:
    api = make_api(api_keys=KEYS)
    answer = await api.post(
        "/v1/runs",
        json={"agent": FORKING_AGENT, "message": "Please check the cities."},
        headers=bearer("key-a"),
    )
    run_id = answer.json()["run_id"]
    for path in (f"/v1/runs/{run_id}/tree", f"/v1/runs/{run_id}/lane"):
        assert (await api.get(path, headers=bearer("key-b"))).status_code == 404
        assert (await api.get(path, headers=bearer("key-a"))).status_code == 200
    bad = await api.get(f"/v1/runs/{run_id}/lane?after=soon", headers=bearer("key-a"))
    assert bad.status_code == 422


async def test_batched_session_events_hold_the_same_entries_and_resume_after_a_batch(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    run = await finished_fork_tree(api)
    url = f"/v1/sessions/{run['session_id']}/events"
    single = parse_sse((await api.get(url, params={"follow": "false"})).text)

    batches = parse_sse((await api.get(url, params={"follow": "false", "batch": "true"})).text)
    assert {m["event"] for m in batches} == {"batch"}
    assert len(batches) < len(single)
    entries = [e for m in batches for e in m["data"]]
    assert entries == [m["data"] for m in single]
    assert all(m["id"] == m["data"][-1]["id"] for m in batches)

    # An EventSource reconnecting after the first batch gets the rest, nothing twice.
    rest = await api.get(
        url,
        params={"follow": "false", "batch": "true"},
        headers={"Last-Event-ID": batches[0]["id"]},
    )
    resumed = [e["id"] for m in parse_sse(rest.text) for e in m["data"]]
    assert resumed == [e["id"] for e in entries[len(batches[0]["data"]) :]]


async def test_the_cluster_view_lists_live_workers_and_counts_recent_ends(
    make_api: ApiFactory, worker: object
) -> None:
    api = make_api()
    await finished_fork_tree(api)

    view = (await api.get("/v1/cluster", params={"window_s": 60, "bucket_s": 5})).json()

    assert [w["pid"] for w in view["workers"]] == [os.getpid()]  # the in-process worker
    assert view["workers"][0]["concurrency"] == view["slots"]["total"] > 0
    # arq keeps a job in its queue until the job returns: the root's last may be finishing.
    assert view["queue_depth"] in (0, 1)
    chart = view["throughput"]
    assert len(chart["runs"]["completed"]) == 12
    assert sum(chart["runs"]["completed"]) == 1
    assert sum(chart["forks"]["completed"]) == len(FORK_PACES)
    assert sum(chart["forks"]["failed"]) == 0
    assert view["runs_by_status"]["completed"] == len(FORK_PACES) + 1  # forks too
