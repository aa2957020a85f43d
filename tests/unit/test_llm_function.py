"""`@llm_function`: typed results from the return annotation, bounded retries on answers
that do not parse, tools, and the same event stream as llm_chat (`fn.stream`), against
the scripted model over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator import OpenAICompatible, OutputParseError, llm_function, tool
from orchestrator.events import EventYield, ReactEndEvent, ReactStartEvent, ResponseYield
from orchestrator.hooks import ToolCallEndEvent, is_response_yield
from orchestrator.runtime import FunctionSpec, agent_spec
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(20)


class Sentiment(BaseModel):
    label: str
    score: float


def model_on(mock_llm: MockLLMFactory, script: dict[str, Any]) -> tuple[OpenAICompatible, Any]:
    server = mock_llm(script)
    llm = OpenAICompatible(
        api_keys="k", model_name="scripted", base_url=server.base_url, retry_delay=0.01
    )
    return llm, server


def answering(*replies: str) -> dict[str, Any]:
    """A script answering each request with the next reply (the last one repeats)."""
    rules = [{"reply": {"content": r}, "times": 1} for r in replies[:-1]]
    return {"rules": rules, "fallback": {"content": replies[-1]}}


@pytest.mark.parametrize(
    ("annotation", "reply", "expected"),
    [
        (int, "42", 42),
        (float, "The answer: 2.5", None),  # prose around a float does not parse
        (bool, "true", True),
        (list[str], '```json\n["a", "b"]\n```', ["a", "b"]),
        (dict[str, int], 'Here you go: {"x": 1, "y": 2}', {"x": 1, "y": 2}),
        (str, "  plain words  ", "plain words"),
    ],
)
async def test_the_answer_is_parsed_into_the_return_annotation(
    mock_llm: MockLLMFactory, annotation: Any, reply: str, expected: Any
) -> None:
    llm, _ = model_on(mock_llm, {"fallback": {"content": reply}})

    async def compute(question: str) -> Any:
        """Answer the question."""

    compute.__annotations__["return"] = annotation
    fn = llm_function(llm_interface=llm, max_output_retries=0)(compute)
    if expected is None:
        with pytest.raises(OutputParseError):
            await fn("q")
    else:
        assert await fn("q") == expected
    await llm.aclose()


async def test_a_pydantic_model_comes_back_as_an_instance(mock_llm: MockLLMFactory) -> None:
    llm, server = model_on(mock_llm, answering('{"label": "positive", "score": 0.9}'))

    @llm_function(llm_interface=llm)
    async def classify(text: str, language: str = "en") -> Sentiment:
        """Classify the sentiment of the text."""

    result = await classify("I love it", language="fr")
    await llm.aclose()
    assert result == Sentiment(label="positive", score=0.9)
    (request,) = server.requests()
    system, user = request["body"]["messages"]
    assert "Classify the sentiment of the text." in system["content"]
    assert '"score"' in system["content"]  # the JSON schema of the return type
    assert "text: I love it" in user["content"]
    assert "language: fr" in user["content"]


async def test_an_unparseable_answer_is_sent_back_then_fixed(mock_llm: MockLLMFactory) -> None:
    llm, server = model_on(mock_llm, answering("about forty", "41"))

    @llm_function(llm_interface=llm)
    async def count(items: list[str]) -> int:
        """Count the items."""

    assert await count(["a", "b"]) == 41
    await llm.aclose()
    _first, second = server.requests()
    retry = second["body"]["messages"][-1]
    assert retry["role"] == "user"
    assert "could not be read" in retry["content"]
    assert second["body"]["messages"][-2] == {"role": "assistant", "content": "about forty"}


async def test_retries_are_bounded_and_end_in_a_clear_error(mock_llm: MockLLMFactory) -> None:
    llm, server = model_on(mock_llm, answering("no idea"))

    @llm_function(llm_interface=llm, max_output_retries=2)
    async def count(items: list[str]) -> int:
        """Count the items."""

    with pytest.raises(OutputParseError, match=r"not a int.*after 2 retries.*no idea"):
        await count(["a"])
    await llm.aclose()
    assert len(server.requests()) == 3


@tool(name="lookup_price", description="Price of a product in cents")
async def lookup_price(product: str) -> int:
    return {"tea": 350, "cake": 420}[product]


@tool(name="price_list", description="Prices of the products in cents")
async def price_list(products: list[str]) -> dict[str, int]:
    return {p: {"tea": 350, "cake": 420}[p] for p in products}


async def test_tools_run_before_the_typed_answer(mock_llm: MockLLMFactory) -> None:
    script = {
        "rules": [
            {
                "match": {"last_role": "user"},
                "reply": {
                    "tool_calls": [
                        {"name": "price_list", "arguments": {"products": ["tea", "cake"]}}
                    ]
                },
            },
            {"match": {"last_role": "tool"}, "reply": {"content": "{last_tool_result}"}},
        ]
    }
    llm, server = model_on(mock_llm, script)

    @llm_function(llm_interface=llm, toolkit=[price_list])
    async def prices(products: list[str]) -> dict[str, int]:
        """Look up each product's price."""

    assert await prices(["tea", "cake"]) == {"tea": 350, "cake": 420}
    await llm.aclose()
    assert [t["function"]["name"] for t in server.requests()[0]["body"]["tools"]] == ["price_list"]


async def test_stream_yields_the_event_stream_and_the_typed_value(
    mock_llm: MockLLMFactory,
) -> None:
    llm, _ = model_on(mock_llm, answering('{"label": "neutral", "score": 0.5}'))

    @llm_function(llm_interface=llm, stream=True)
    async def classify(text: str) -> Sentiment:
        """Classify."""

    outputs = [o async for o in classify.stream("meh")]
    await llm.aclose()
    kinds = [type(o.event) for o in outputs if isinstance(o, EventYield)]
    assert kinds[0] is ReactStartEvent
    assert kinds[-1] is ReactEndEvent
    final = outputs[-1]
    assert is_response_yield(final)
    assert final.response == Sentiment(label="neutral", score=0.5)
    assert final.messages[-1]["role"] == "assistant"


async def test_enable_event_makes_the_call_itself_the_stream(mock_llm: MockLLMFactory) -> None:
    llm, _ = model_on(mock_llm, answering("7"))

    @llm_function(llm_interface=llm, enable_event=True)
    async def seven() -> int:
        """Say seven."""

    responses = [o.response async for o in seven() if isinstance(o, ResponseYield)]
    await llm.aclose()
    assert responses == [7]


def test_the_function_is_an_agent_a_worker_can_run() -> None:
    llm = OpenAICompatible(api_keys="k", model_name="m", base_url="http://127.0.0.1:9/v1")

    @llm_function(llm_interface=llm, toolkit=[lookup_price])
    async def total(products: list[str]) -> int:
        """Sum the prices."""

    spec = agent_spec(total)
    assert isinstance(spec, FunctionSpec)
    assert spec.return_type is int
    assert spec.output.from_json("12") == 12
    assert callable(total.stream)


async def test_tool_events_reach_the_stream(mock_llm: MockLLMFactory) -> None:
    script = {
        "rules": [
            {
                "match": {"last_role": "user"},
                "reply": {
                    "tool_calls": [{"name": "lookup_price", "arguments": {"product": "tea"}}]
                },
            },
            {"match": {"last_role": "tool"}, "reply": {"content": "{last_tool_result}"}},
        ]
    }
    llm, _ = model_on(mock_llm, script)

    @llm_function(llm_interface=llm, toolkit=[lookup_price])
    async def price(product: str) -> int:
        """Price of the product."""

    ends: list[ToolCallEndEvent] = []
    value: Any = None
    async for output in price.stream("tea"):
        if isinstance(output, EventYield) and isinstance(output.event, ToolCallEndEvent):
            ends.append(output.event)
        elif isinstance(output, ResponseYield):
            value = output.response
    await llm.aclose()
    assert [e.tool_name for e in ends] == ["lookup_price"]
    assert value == 350


async def test_an_event_observer_sees_an_llm_functions_events(mock_llm: MockLLMFactory) -> None:
    from orchestrator.hooks import ReActEvent, with_event_observer

    llm, _ = model_on(mock_llm, answering("12"))
    seen: list[str] = []

    def observe(event: ReActEvent) -> None:
        seen.append(event.event_type.value)

    @with_event_observer(observe)
    @llm_function(llm_interface=llm)
    async def dozen() -> int:
        """Say twelve."""

    assert await dozen() == 12
    assert seen[0] == "react_start"
    assert seen[-1] == "react_end"
    seen.clear()
    outputs = [o async for o in dozen.stream()]
    await llm.aclose()
    assert outputs[-1].response == 12
    assert "llm_call_end" in seen


async def test_a_retry_after_tools_keeps_iterations_balanced(mock_llm: MockLLMFactory) -> None:
    from orchestrator.hooks import ReactIterationEndEvent, ReactIterationStartEvent

    script = {
        "rules": [
            {
                "match": {"last_role": "user", "last_user_contains": "items"},
                "reply": {
                    "tool_calls": [{"name": "lookup_price", "arguments": {"product": "tea"}}]
                },
            },
            {"match": {"last_role": "tool"}, "reply": {"content": "three-fifty"}},
            {"match": {"last_user_contains": "could not be read"}, "reply": {"content": "350"}},
        ]
    }
    llm, _ = model_on(mock_llm, script)

    @llm_function(llm_interface=llm, toolkit=[lookup_price])
    async def price(items: str) -> int:
        """Price of the items."""

    outputs = [o async for o in price.stream("items: tea")]
    await llm.aclose()
    assert outputs[-1].response == 350
    marks = [
        (type(o.event).__name__, o.event.iteration)
        for o in outputs
        if isinstance(o, EventYield)
        and isinstance(o.event, ReactIterationStartEvent | ReactIterationEndEvent)
    ]
    assert marks == [
        ("ReactIterationStartEvent", 2),
        ("ReactIterationEndEvent", 2),
        ("ReactIterationStartEvent", 2),
        ("ReactIterationEndEvent", 2),
    ]
