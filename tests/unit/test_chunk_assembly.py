"""One assembler for what a model returns (`orchestrator.ports.ChunkAccumulator`), used by
the ReAct loop and by `orchestrator.llm`: tool calls whose pieces carry no index, and
function names split across pieces, come out whole, in the accumulator and in a turn."""

from __future__ import annotations

from typing import Any

from orchestrator import OpenAICompatible, llm_chat, tool
from orchestrator.events import EventYield, ResponseYield, ToolCallArgumentsDeltaEvent
from orchestrator.llm.testing import ReplayTransport, Reply, text_chunks
from orchestrator.ports import ChunkAccumulator
from orchestrator.runtime import agent_spec, run_turn


def _pieces(*calls: dict[str, Any]) -> list[dict[str, Any]]:
    """One chunk per tool-call piece, as a server that streams them one by one sends."""
    return [
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}
        for call in calls
    ]


# Two calls streamed without `index` (some OpenAI-compatible servers do), the first
# one's name split in two pieces, the second one's name repeated whole in every piece.
UNINDEXED_SPLIT = _pieces(
    {"id": "call_w", "type": "function", "function": {"name": "get_", "arguments": ""}},
    {"function": {"name": "weather", "arguments": '{"city": '}},
    {"function": {"arguments": '"Paris"}'}},
    {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": ""}},
    {"function": {"name": "get_time", "arguments": '{"tz": "UTC"}'}},
)


def test_pieces_without_index_and_split_names_assemble_into_whole_calls() -> None:
    acc = ChunkAccumulator()
    for chunk in UNINDEXED_SPLIT:
        acc.add(chunk)
    assert acc.message()["tool_calls"] == [
        {
            "id": "call_w",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_t",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "UTC"}'},
        },
    ]


def test_add_reports_the_argument_text_each_chunk_added_by_call() -> None:
    acc = ChunkAccumulator()
    added = [acc.add(chunk) for chunk in UNINDEXED_SPLIT]
    assert added == [[], [(0, '{"city": ')], [(0, '"Paris"}')], [], [(1, '{"tz": "UTC"}')]]


def test_a_whole_completion_numbers_its_calls_by_position_and_serialises_objects() -> None:
    acc = ChunkAccumulator()
    acc.add_completion(
        {
            "id": "x",
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": "Checking.",
                        "tool_calls": [
                            {"id": "a", "function": {"name": "f", "arguments": {"x": 1}}},
                            {"id": "b", "function": {"name": "g"}},
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 1},
        }
    )
    calls = acc.message()["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("a", "f", '{"x": 1}'),
        ("b", "g", ""),
    ]
    assert acc.content() == "Checking."
    assert acc.finish_reason() == "tool_calls"
    assert acc.usage == {"prompt_tokens": 1}


@tool(name="get_weather", description="Weather for a city")
async def get_weather(city: str) -> str:
    return f"sunny in {city}"


@tool(name="get_time", description="Time in a zone")
async def get_time(tz: str) -> str:
    return f"noon {tz}"


async def test_a_turn_runs_every_unindexed_split_name_call_the_model_streamed() -> None:
    """The loop assembles with the same accumulator: both calls run with their own
    names and arguments (the loop once merged index-less pieces into one call and kept
    only the last piece of a name)."""
    finish = {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    transport = ReplayTransport(
        [Reply.sse([*UNINDEXED_SPLIT, finish]), Reply.sse(text_chunks("All done."))]
    )
    llm = OpenAICompatible("k", "m", "http://llm.test/v1", transport=transport, max_retries=0)

    @llm_chat(llm_interface=llm, toolkit=[get_weather, get_time], stream=True)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    spec = agent_spec(agent)
    state = await spec.initial_state(("hi",), {}, session_id="s", agent_call_id="a")
    outputs = [output async for output in run_turn(spec, state)]
    await llm.aclose()

    response = outputs[-1]
    assert isinstance(response, ResponseYield)
    answers = {m["tool_call_id"]: m["content"] for m in response.messages if m["role"] == "tool"}
    assert answers == {"call_w": "sunny in Paris", "call_t": "noon UTC"}
    deltas = [
        (o.event.tool_name, o.event.delta)
        for o in outputs
        if isinstance(o, EventYield) and isinstance(o.event, ToolCallArgumentsDeltaEvent)
    ]
    assert deltas == [
        ("get_weather", '{"city": '),
        ("get_weather", '"Paris"}'),
        ("get_time", '{"tz": "UTC"}'),
    ]
    assert response.response == "All done."
