"""FallbackLLM: the next model answers when one gives up; bad requests are not retried."""

from __future__ import annotations

import random
from typing import Any

import pytest

from orchestrator.errors import LLMHTTPError, LLMRetriesExhausted
from orchestrator.llm import ChunkAccumulator, FallbackLLM, OpenAICompatible
from orchestrator.llm.testing import ReplayTransport, Reply, completion, text_chunks
from orchestrator.ports import LLMInterface

pytestmark = pytest.mark.timeout(10)

MESSAGES = [{"role": "user", "content": "hi"}]


def _model(name: str, *replies: Reply) -> OpenAICompatible:
    transport = ReplayTransport(replies)
    return OpenAICompatible(
        "k", name, "http://llm.test/v1", transport=transport, max_retries=1, retry_delay=0.01
    )


def _calls(model: OpenAICompatible) -> int:
    transport = model._transport
    assert isinstance(transport, ReplayTransport)
    return len(transport.requests)


def _answer(result: dict[str, Any]) -> str:
    content: str = result["choices"][0]["message"]["content"]
    return content


def test_it_implements_the_llm_interface() -> None:
    assert isinstance(FallbackLLM([_model("a", Reply.json(completion("x")))]), LLMInterface)


async def test_next_model_answers_when_the_first_exhausts_its_retries() -> None:
    first = _model("a", Reply.error(503))
    second = _model("b", Reply.json(completion("from b")))
    assert _answer(await FallbackLLM([first, second]).chat(MESSAGES)) == "from b"
    assert _calls(first) == 2


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_model_answering_auth_or_not_found_is_benched(status: int) -> None:
    first = _model("a", Reply.error(status))
    second = _model("b", Reply.json(completion("from b")))
    llm = FallbackLLM([first, second])
    await llm.chat(MESSAGES)
    await llm.chat(MESSAGES)
    assert _calls(first) == 1
    assert llm.benched == {0}


async def test_bad_request_is_raised_without_trying_other_models() -> None:
    first = _model("a", Reply.error(400, "bad messages"))
    second = _model("b", Reply.json(completion("from b")))
    with pytest.raises(LLMHTTPError, match="bad messages"):
        await FallbackLLM([first, second]).chat(MESSAGES)
    assert _calls(second) == 0


async def test_when_every_model_fails_the_last_error_is_raised() -> None:
    llm = FallbackLLM([_model("a", Reply.error(500)), _model("b", Reply.error(502))])
    with pytest.raises(LLMRetriesExhausted, match="HTTP 502"):
        await llm.chat(MESSAGES)


async def test_stream_falls_back_only_before_the_first_chunk() -> None:
    llm = FallbackLLM([_model("a", Reply.error(500)), _model("b", Reply.sse(text_chunks("ok")))])
    acc = ChunkAccumulator()
    async for chunk in llm.chat_stream(MESSAGES):
        acc.add(chunk)
    assert acc.message()["content"] == "ok"

    broken = _model("a", Reply.sse(text_chunks("partial answer"), drop_after=3))
    llm = FallbackLLM([broken, _model("b", Reply.sse(text_chunks("other")))])

    async def consume() -> None:
        async for _ in llm.chat_stream(MESSAGES):
            pass

    with pytest.raises(LLMRetriesExhausted):
        await consume()


async def test_weights_choose_the_first_model_tried() -> None:
    a = _model("a", Reply.json(completion("a")))
    b = _model("b", Reply.json(completion("b")))
    llm = FallbackLLM([a, b], weights=[0, 1], rng=random.Random(1))
    answers = {_answer(await llm.chat(MESSAGES)) for _ in range(5)}
    assert answers == {"b"}
