"""A model request's JSON body: encoded once, by pydantic-core (a quarter of json.dumps's
CPU for a turn's messages and tool definitions), with json.dumps's answer wherever the
two could differ (non-finite floats, values pydantic-core cannot encode)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import orchestrator.llm.http as http_module
from orchestrator.llm.http import HTTPPool

pytestmark = pytest.mark.timeout(10)

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": 'héllo ✓ \u2028 "q" \\'}],
    "tools": [{"type": "function", "function": {"name": "t", "parameters": {"a": [1, None]}}}],
    "temperature": 0.2,
    "stream": True,
}


class _Counted:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value: Any, **kwargs: Any) -> str:
        self.calls += 1
        return json.dumps(value, **kwargs)


def _pool(seen: list[httpx.Request]) -> HTTPPool:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    return HTTPPool(httpx.MockTransport(answer), "http://llm.test/v1/", httpx.Timeout(7.0))


async def test_a_request_body_is_not_encoded_by_json_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    counted = _Counted()
    monkeypatch.setattr(http_module, "json_dumps", counted)
    seen: list[httpx.Request] = []
    await _pool(seen).post("chat/completions", json=BODY)
    assert counted.calls == 0
    expected = httpx.Request("POST", "http://llm.test/v1/chat/completions", json=BODY)
    assert seen[0].content == expected.content


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
async def test_a_non_finite_float_is_refused_as_before(bad: float) -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(ValueError, match="JSON compliant"):
        await _pool(seen).post("chat/completions", json={**BODY, "temperature": bad})
    assert seen == []


async def test_a_value_json_cannot_encode_is_refused_as_before() -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(TypeError, match="not JSON serializable"):
        await _pool(seen).post("chat/completions", json={**BODY, "x": object()})
    assert seen == []


async def test_text_that_reads_nan_or_infinity_is_sent_as_is() -> None:
    seen: list[httpx.Request] = []
    body = {**BODY, "messages": [{"role": "user", "content": "NaN and Infinity"}]}
    await _pool(seen).post("chat/completions", json=body)
    assert json.loads(seen[0].content) == body
