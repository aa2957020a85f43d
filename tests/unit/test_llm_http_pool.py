"""HTTPPool sends what httpx.AsyncClient sent for a model client: the JSON body, the
caller's headers over httpx's defaults, relative URLs joined to the base, the timeout."""

from __future__ import annotations

import json

import httpx
import pytest

from orchestrator.llm.http import HTTPPool

pytestmark = pytest.mark.timeout(10)


def _pool(seen: list[httpx.Request]) -> HTTPPool:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    return HTTPPool(httpx.MockTransport(answer), "http://llm.test/v1/", httpx.Timeout(7.0))


async def test_post_sends_json_headers_and_the_joined_url_and_reads_the_answer() -> None:
    seen: list[httpx.Request] = []
    response = await _pool(seen).post("messages", json={"a": 1}, headers={"x-api-key": "k"})
    assert response.json() == {"ok": True}
    assert response.request is seen[0]
    request = seen[0]
    assert str(request.url) == "http://llm.test/v1/messages"
    assert json.loads(request.content) == {"a": 1}
    assert request.headers["x-api-key"] == "k"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("python-httpx/")
    assert request.extensions["timeout"]["read"] == 7.0


async def test_stream_takes_an_absolute_url_and_closes_the_response_on_exit() -> None:
    seen: list[httpx.Request] = []
    pool = _pool(seen)
    url = httpx.URL("http://llm.test/v1/chat/completions")
    async with pool.stream("POST", url, json={}) as response:
        assert response.status_code == 200
    assert response.is_closed
    assert seen[0].url == url
    await pool.aclose()
    assert pool.is_closed


async def test_the_body_and_headers_are_what_httpx_sends_for_json() -> None:
    seen: list[httpx.Request] = []
    body = {"messages": [{"role": "user", "content": "héllo ✓ \u2028"}], "n": 1.5, "x": None}
    await _pool(seen).post("messages", json=body, headers={"x-api-key": "k"})
    await _pool(seen).post("messages", json=body, headers={"x-api-key": "k"})
    expected = httpx.Request("POST", "http://llm.test/v1/messages", json=body)
    for request in seen:
        assert request.content == expected.content
        assert request.headers["content-length"] == expected.headers["content-length"]
        assert request.url == expected.url


async def test_a_body_json_cannot_encode_is_refused_before_anything_is_sent() -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(ValueError, match="JSON compliant"):
        await _pool(seen).post("messages", json={"n": float("nan")})
    assert seen == []
