"""/readyz, /metrics, the dashboard's files and the OpenAPI schema."""

from __future__ import annotations

import re
import time

import pytest

from orchestrator.keys import Keys
from orchestrator.runs import RunRecord
from orchestrator.store.connection import Redis
from orchestrator.store.runs import RunStore
from tests.fixtures_api import AGENT, ApiFactory

pytestmark = pytest.mark.integration


SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"\})? (-?[0-9.e+]+|NaN)$')


async def test_readyz_says_ready_when_redis_answers(make_api: ApiFactory) -> None:
    answer = await make_api().get("/readyz")
    assert answer.status_code == 200
    assert answer.json()["redis"] == "ok"


async def test_metrics_report_queue_runs_latency_and_tokens(
    make_api: ApiFactory, worker: object, redis: Redis, keys: Keys
) -> None:
    api = make_api()
    run = (await api.post("/v1/runs", json={"agent": AGENT, "message": "hi"})).json()
    await api.get(f"/v1/runs/{run['run_id']}/events")  # until it ends
    # A queued run whose job is not due yet: the worker cannot take it from under us.
    queued = RunRecord(run_id="queued-run", session_id="queued-session", agent="m:nobody")
    await RunStore(redis, keys).create(queued)
    await redis.zadd(keys.queue(), {"queued-run:1": (time.time() + 3600) * 1000})

    answer = await api.get("/metrics")
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = answer.text.splitlines()
    for line in lines:
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line
    values = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in lines if line[0] != "#"}
    assert values["orchestrator_queue_depth"] == "1"
    assert values['orchestrator_runs{status="completed"}'] == "1"
    assert values['orchestrator_runs{status="queued"}'] == "1"
    assert values["orchestrator_dispatch_latency_seconds_count"] == "1"
    assert float(values['orchestrator_dispatch_latency_seconds{quantile="0.5"}']) >= 0
    assert int(values['orchestrator_tokens{kind="total"}']) > 0
    assert values["orchestrator_workers"] == "1"
    assert "# TYPE orchestrator_dispatch_latency_seconds summary" in lines


async def test_the_dashboard_and_its_script_are_served(make_api: ApiFactory) -> None:
    api = make_api()
    page = await api.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/app.js">' in page.text
    script = await api.get("/static/app.js")
    assert script.status_code == 200
    assert "EventSource" in script.text


async def test_the_openapi_schema_lists_every_route(make_api: ApiFactory) -> None:
    paths = (await make_api().get("/openapi.json")).json()["paths"]
    assert {
        "/v1/runs",
        "/v1/runs/{run_id}",
        "/v1/runs/{run_id}/abort",
        "/v1/runs/{run_id}/events",
        "/v1/sessions/{session_id}/events",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(paths)
