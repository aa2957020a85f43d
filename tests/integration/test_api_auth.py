"""Bearer keys map to tenants; a tenant sees and aborts only its own runs and streams."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from orchestrator.client import Client
from orchestrator.errors import RunNotFound
from orchestrator.store.batches import item_job_id
from tests.fixtures_api import AGENT, ApiFactory, bearer, parse_sse
from tests.integration.workerproc import drop_job_keys

pytestmark = pytest.mark.integration


KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
A, B = bearer("key-a"), bearer("key-b")


async def submit(api: httpx.AsyncClient, headers: dict[str, str], **extra: Any) -> dict[str, Any]:
    answer = await api.post(
        "/v1/runs", json={"agent": AGENT, "message": "hi", **extra}, headers=headers
    )
    assert answer.status_code == 202, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_requests_without_a_valid_key_are_401(make_api: ApiFactory) -> None:
    api = make_api(api_keys=KEYS)
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic a2V5LWE6"}):
        answer = await api.get("/v1/runs", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"] == "unauthorized"
    assert (await api.get("/v1/runs", headers=A)).status_code == 200


async def test_a_tenant_sees_only_its_own_runs(make_api: ApiFactory) -> None:
    api = make_api(api_keys=KEYS)
    mine = await submit(api, A)
    theirs = await submit(api, B)

    listed = (await api.get("/v1/runs", headers=A)).json()["runs"]
    assert [r["run_id"] for r in listed] == [mine["run_id"]]
    assert (await api.get(f"/v1/runs/{mine['run_id']}", headers=A)).status_code == 200
    assert (await api.get(f"/v1/runs/{theirs['run_id']}", headers=A)).status_code == 404


async def test_a_tenant_cannot_abort_or_watch_another_tenants_run(make_api: ApiFactory) -> None:
    api = make_api(api_keys=KEYS)
    theirs = await submit(api, B)
    run_id, session_id = theirs["run_id"], theirs["session_id"]

    assert (await api.post(f"/v1/runs/{run_id}/abort", headers=A)).status_code == 404
    assert (await api.get(f"/v1/runs/{run_id}", headers=B)).json()["status"] == "queued"
    assert (await api.get(f"/v1/runs/{run_id}/events", headers=A)).status_code == 404
    answer = await api.get(f"/v1/sessions/{session_id}/events", params={"access_token": "key-a"})
    assert answer.status_code == 404


async def test_a_tenant_cannot_add_runs_to_another_tenants_session(make_api: ApiFactory) -> None:
    api = make_api(api_keys=KEYS)
    theirs = await submit(api, B)
    answer = await api.post(
        "/v1/runs",
        json={"agent": AGENT, "message": "sneak in", "session_id": theirs["session_id"]},
        headers=A,
    )
    assert answer.status_code == 409
    own = await submit(api, B, session_id=theirs["session_id"])
    assert own["session_id"] == theirs["session_id"]


async def test_streams_accept_the_key_as_access_token_for_eventsource(
    make_api: ApiFactory,
) -> None:
    api = make_api(api_keys=KEYS)
    mine = await submit(api, A)
    await api.post(f"/v1/runs/{mine['run_id']}/abort", headers=A)

    answer = await api.get(f"/v1/runs/{mine['run_id']}/events", params={"access_token": "key-a"})
    assert answer.status_code == 200
    assert parse_sse(answer.text)[-1]["data"]["status"]["status"] == "aborted"
    session = await api.get(
        f"/v1/sessions/{mine['session_id']}/events",
        params={"access_token": "key-a", "follow": "false"},
    )
    assert session.status_code == 200
    # Only the streaming routes take a key in the URL.
    plain = await api.get(f"/v1/runs/{mine['run_id']}", params={"access_token": "key-a"})
    assert plain.status_code == 401


async def test_an_open_api_serves_everyone_and_says_it_is_open(make_api: ApiFactory) -> None:
    keyed = make_api(api_keys=KEYS)
    theirs = await submit(keyed, B)
    open_api = make_api()
    assert (await open_api.get(f"/v1/runs/{theirs['run_id']}")).status_code == 200
    health = (await open_api.get("/healthz")).json()
    assert health["auth"] == "open"
    assert "without API keys" in health["warning"]
    assert (await keyed.get("/healthz")).json() == {"status": "ok", "auth": "api_keys"}


async def test_a_tenant_sees_only_its_own_batches(make_api: ApiFactory, client: Client) -> None:
    """Batches belong to the tenant that submitted them, on the API and the client."""
    api = make_api(api_keys=KEYS)
    mine = await client.submit_batch(["a", "b"], tenant="tenant-a")
    theirs = await client.submit_batch(["c"], tenant="tenant-b")
    try:
        listed = (await api.get("/v1/batches", headers=A)).json()["batches"]
        assert [b["batch_id"] for b in listed] == [mine.batch_id]
        assert (await api.get(f"/v1/batches/{mine.batch_id}", headers=A)).status_code == 200
        assert (await api.get(f"/v1/batches/{theirs.batch_id}", headers=A)).status_code == 404

        assert (await mine.progress()).total == 2
        with pytest.raises(RunNotFound):
            await client.batch_results(theirs.batch_id, tenant="tenant-a")
        operator = {b.batch_id for b in await client.recent_batches()}
        assert operator == {mine.batch_id, theirs.batch_id}
        # and they do not share a rate limit unless asked to (same limiter_name)
        spec_a = await client.batch_spec(mine.batch_id)
        spec_b = await client.batch_spec(theirs.batch_id)
        assert spec_a.limiter_name != spec_b.limiter_name
    finally:
        jobs = [item_job_id(b.batch_id, i) for b in (mine, theirs) for i in range(2)]
        await drop_job_keys(client.redis, jobs)
