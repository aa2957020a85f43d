"""A model request's JSON body is encoded by json.dumps (strict JSON): a non-finite float
or a value JSON cannot encode is refused before anything is sent, whatever the rest of
the body says. (Round 8 tried pydantic-core with json.dumps as a fallback: it sent values
json.dumps refuses, some as other values, and refused them only when the text held
"NaN" or "Infinity"; reverted after review.)"""

from __future__ import annotations

import json

import httpx
import pytest

from orchestrator.llm.http import HTTPPool

pytestmark = pytest.mark.timeout(10)

BODY = {
    "model": "m",
    "messages": [{"role": "user", "content": 'héllo ✓ \u2028 "q" \\'}],
    "tools": [{"type": "function", "function": {"name": "t", "parameters": {"a": [1, None]}}}],
    "temperature": 0.2,
    "stream": True,
}


def _pool(seen: list[httpx.Request]) -> HTTPPool:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    return HTTPPool(httpx.MockTransport(answer), "http://llm.test/v1/", httpx.Timeout(7.0))


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
