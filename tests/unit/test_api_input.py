"""Bad input gets a 4xx naming what is wrong, never a 500; Redis down is a 503.

No Redis is needed: the app connects lazily and these requests are refused before any
Redis call (or, for the 503s, point at a port where nothing listens).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orchestrator.api import create_app, parse_api_key
from orchestrator.api.schemas import unencodable_text
from orchestrator.errors import ConfigError
from orchestrator.settings import Settings

NOWHERE = Settings(redis_url="redis://127.0.0.1:1/0", key_prefix="unit-api")
AGENT = "tests.e2e.agents:weather_chat"


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(NOWHERE, max_body_bytes=2048)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        yield client
    await app.state.api.client.close()


async def post_runs(api: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await api.post("/v1/runs", json=body)


async def test_malformed_json_is_400(api: httpx.AsyncClient) -> None:
    answer = await api.post(
        "/v1/runs", content=b'{"agent": ', headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "malformed_json",
        "message": "the request body is not valid JSON",
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "no agent"}, "agent"),
        ({"agent": "not-an-address", "message": "x"}, "agent"),
        ({"agent": AGENT, "session_id": "has{braces}"}, "session_id"),
        ({"agent": AGENT, "history": "not a list"}, "history"),
        ({"agent": AGENT, "max_attempts": 0}, "max_attempts"),
        ({"agent": AGENT, "surprise": True}, "surprise"),
        ([1, 2, 3], "body"),
    ],
)
async def test_invalid_submissions_are_422_naming_the_field(
    api: httpx.AsyncClient, body: Any, field: str
) -> None:
    answer = await post_runs(api, body)
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["error"] == "validation_error"
    assert field in problem["message"]
    assert any(field in [str(p) for p in d["loc"]] for d in problem["details"])


@pytest.mark.parametrize(
    "query",
    [{"status": "sleeping"}, {"limit": "0"}, {"limit": "many"}, {"offset": "-1"}, {"agent": "x"}],
)
async def test_bad_list_filters_are_422(api: httpx.AsyncClient, query: dict[str, str]) -> None:
    answer = await api.get("/v1/runs", params=query)
    assert answer.status_code == 422
    assert answer.json()["error"] == "validation_error"


async def test_a_body_over_the_limit_is_413(api: httpx.AsyncClient) -> None:
    big = {"agent": AGENT, "message": "x" * 4096}
    answer = await post_runs(api, big)
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"


async def test_a_streamed_body_without_length_is_cut_off_at_the_limit(
    api: httpx.AsyncClient,
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"agent": "' + AGENT.encode() + b'", "message": "'
        for _ in range(10):
            yield b"y" * 512
        yield b'"}'

    answer = await api.post(
        "/v1/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 413


def _raw(text: str) -> bytes:
    """A JSON body written by hand, so it can hold escapes json.dumps would not produce."""
    return text.replace("AGENT", AGENT).encode()


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/runs", '{"agent": "AGENT", "message": "\\ud800"}', "message"),
        ("/v1/runs", '{"agent": "AGENT", "message": "ok \\udfff ok"}', "message"),
        (
            "/v1/runs",
            '{"agent": "AGENT", "history": [{"role": "user", "content": "\\ud83d"}]}',
            "history[0].content",
        ),
        ("/v1/runs", '{"agent": "AGENT", "args": {"city": ["Paris", "\\udc00"]}}', "args.city[1]"),
        ("/v1/runs", '{"agent": "AGENT", "args": {"\\ud800": 1}}', "a key in args"),
        (
            "/v1/runs",
            '{"agent": "AGENT", "template_params": {"t": "\\ude00"}}',
            "template_params.t",
        ),
        ("/v1/runs/some-run/abort", '{"reason": "\\udbff"}', "reason"),
    ],
)
async def test_text_that_is_not_valid_unicode_is_422_naming_where_it_is(
    api: httpx.AsyncClient, path: str, body: str, where: str
) -> None:
    answer = await api.post(path, content=_raw(body), headers={"content-type": "application/json"})
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["error"] == "validation_error"
    assert f"{where} is not valid Unicode" in problem["message"]
    assert problem["details"][0]["type"] == "unencodable_text"


async def test_a_surrogate_pair_is_valid_text(api: httpx.AsyncClient) -> None:
    body = _raw('{"agent": "AGENT", "message": "sunny \\ud83d\\ude00", "args": {"k": "\\u00e9"}}')
    answer = await api.post("/v1/runs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 503  # valid: it got as far as Redis (which is down here)


def test_the_unicode_check_walks_any_depth_without_recursion() -> None:
    deep: Any = "\ud800"
    for _ in range(100_000):
        deep = [deep]
    assert unencodable_text({"args": {"x": deep}}) == "args.x" + "[0]" * 100_000
    assert unencodable_text({"ok": [1, None, True, 2.5, {"a": "b"}]}) is None


async def test_unknown_routes_and_methods_are_4xx(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/nothing")).status_code == 404
    assert (await api.delete("/v1/runs")).status_code == 405


async def test_redis_down_is_503_with_a_clear_body(api: httpx.AsyncClient) -> None:
    for answer in (
        await api.get("/v1/runs"),
        await api.get("/v1/runs/some-run"),
        await post_runs(api, {"agent": AGENT, "message": "x"}),
        await api.get("/readyz"),
    ):
        assert answer.status_code == 503
        assert answer.json()["error"] == "store_unavailable"
        assert "Redis" in answer.json()["message"]
    assert (await api.get("/healthz")).status_code == 200


def test_api_key_specs_are_key_colon_tenant() -> None:
    assert parse_api_key("s3cret:acme") == ("s3cret", "acme")
    assert parse_api_key("a:b:acme") == ("a:b", "acme")
    for bad in ("nocolon", ":acme", "key:"):
        with pytest.raises(ConfigError):
            parse_api_key(bad)
