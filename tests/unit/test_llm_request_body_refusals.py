"""A model request's JSON body goes through json.dumps(allow_nan=False): a value it cannot
encode is a TypeError raised before anything is sent, whatever the words in the messages;
a non-finite float (also as a dict key) a ValueError; a None key the JSON key "null".
(The pydantic-core encoding tried in round 8, 430810f, failed each of these.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from orchestrator.llm.http import HTTPPool

pytestmark = pytest.mark.timeout(10)

BODY: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0.2,
}


def _pool(seen: list[httpx.Request]) -> HTTPPool:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    return HTTPPool(httpx.MockTransport(answer), "http://llm.test/v1/", httpx.Timeout(7.0))


async def _outcome(body: dict[str, Any]) -> str:
    seen: list[httpx.Request] = []
    try:
        await _pool(seen).post("chat/completions", json=body)
    except (TypeError, ValueError) as exc:
        return f"refused: {type(exc).__name__}"
    return "sent" if seen else "not sent"


async def test_whether_a_body_is_sent_does_not_depend_on_the_words_in_its_messages() -> None:
    """The same llm kwargs (a datetime in `metadata`) must not be sent on one turn and
    refused on the next because a tool result or user message contains the word "NaN"
    (a pandas table) or "Infinity": on 92f1dfc the first goes through pydantic-core
    (sent), the second falls back to json.dumps (TypeError)."""
    kwargs = {"metadata": {"requested_at": datetime(2026, 1, 1, tzinfo=UTC)}}
    plain = {**BODY, **kwargs}
    with_nan = {
        **BODY,
        **kwargs,
        "messages": [{"role": "tool", "tool_call_id": "c", "content": "col b: 1.0, NaN"}],
    }
    assert await _outcome(plain) == await _outcome(with_nan)


async def test_a_decimal_parameter_is_refused_not_sent_as_a_string() -> None:
    """`temperature=Decimal("0.2")` was a TypeError before anything was sent; on 92f1dfc
    it is sent as the JSON string "0.2" (a provider's 400, after a round trip)."""
    seen: list[httpx.Request] = []
    with pytest.raises(TypeError, match="not JSON serializable"):
        await _pool(seen).post("chat/completions", json={**BODY, "temperature": Decimal("0.2")})
    assert seen == []


async def test_a_none_key_is_sent_as_null_as_before() -> None:
    """json.dumps writes a None key as "null"; pydantic-core as "None": another value."""
    seen: list[httpx.Request] = []
    await _pool(seen).post("chat/completions", json={**BODY, "metadata": {None: "x"}})
    assert json.loads(seen[0].content)["metadata"] == {"null": "x"}


async def test_a_non_finite_float_key_is_refused_as_before() -> None:
    """A NaN/inf dict key was a ValueError (allow_nan=False); on 92f1dfc it is sent as
    the key "nan"/"inf" (the body holds neither b"NaN" nor b"Infinity")."""
    seen: list[httpx.Request] = []
    with pytest.raises(ValueError, match="JSON compliant"):
        await _pool(seen).post("chat/completions", json={**BODY, "logit_bias": {float("nan"): 1}})
    assert seen == []
