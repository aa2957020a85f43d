"""The scripted model, checked over real HTTP with httpx, as an OpenAI client sees it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.errors import ConfigError
from orchestrator.mock_llm import MockLLMServer, load_script
from orchestrator.mock_llm.script import Latency
from orchestrator.mock_llm.testing import MockLLMThread
from tests.fixtures_llm import MockLLMFactory

JSON = dict[str, Any]
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("get_weather", "calculate")
]


def user(text: str) -> JSON:
    return {"role": "user", "content": text}


def tool(text: str, call_id: str = "call_x") -> JSON:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as c:
        yield c


def chat(client: httpx.Client, llm: MockLLMThread, messages: list[JSON], **extra: Any) -> JSON:
    response = client.post(f"{llm.base_url}/chat/completions", json={"messages": messages, **extra})
    response.raise_for_status()
    body: JSON = response.json()
    return body


def stream_lines(
    client: httpx.Client, llm: MockLLMThread, messages: list[JSON], **extra: Any
) -> list[str]:
    """The payloads of the `data:` lines of a streamed answer, raw."""
    body = {"messages": messages, "stream": True, **extra}
    with client.stream("POST", f"{llm.base_url}/chat/completions", json=body) as response:
        response.raise_for_status()
        assert response.headers["content-type"] == "text/event-stream"
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def stream_chunks(
    client: httpx.Client, llm: MockLLMThread, messages: list[JSON], **extra: Any
) -> list[JSON]:
    lines = stream_lines(client, llm, messages, **extra)
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def reply_text(completion: JSON) -> str:
    content: str = completion["choices"][0]["message"]["content"]
    return content


def rules(*rule_list: JSON, **script: Any) -> JSON:
    return {"rules": list(rule_list), **script}


# --- answers -----------------------------------------------------------------------------


def test_non_streamed_request_gets_one_chat_completion(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules({"reply": {"content": "Hello there, friend."}}))
    completion = chat(client, llm, [user("hi")])
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello there, friend.",
    }
    assert completion["choices"][0]["finish_reason"] == "stop"
    usage = completion["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_streamed_text_arrives_in_word_pieces_then_done(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules({"reply": {"content": "one two three four"}}))
    chunks = stream_chunks(client, llm, [user("hi")])
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks]
    assert "".join(pieces) == "one two three four"
    assert len([p for p in pieces if p]) == 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert not any("usage" in chunk for chunk in chunks)


def test_streamed_tool_call_arguments_reassemble_from_pieces(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    arguments = {"city": "Paris", "unit": "celsius", "days": 3}
    llm = mock_llm(
        rules({"reply": {"tool_calls": [{"name": "get_weather", "arguments": arguments}]}})
    )
    chunks = stream_chunks(client, llm, [user("weather?")])
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if "tool_calls" in c["choices"][0]["delta"]
    ]
    first, rest = deltas[0], deltas[1:]
    assert first["index"] == 0
    assert first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert len(rest) > 1, "arguments should arrive in several pieces"
    assert all(
        set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in rest
    )
    assert json.loads("".join(d["function"]["arguments"] for d in rest)) == arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def _reassemble(chunks: list[JSON]) -> dict[int, JSON]:
    calls: dict[int, JSON] = {}
    for chunk in chunks:
        for delta in chunk["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(delta["index"], {"arguments": ""})
            call.update({k: delta[k] for k in ("id",) if k in delta})
            call["name"] = delta["function"].get("name", call.get("name"))
            call["arguments"] += delta["function"]["arguments"]
    return calls


PARALLEL = rules(
    {
        "reply": {
            "content": "Checking both.",
            "tool_calls": [
                {"name": "get_weather", "arguments": {"city": "Paris"}},
                {"name": "get_weather", "arguments": {"city": "Tokyo"}},
                {"name": "calculate", "arguments": {"expression": "1+1"}},
            ],
        }
    }
)


def test_several_tool_calls_stream_with_indexes_zero_to_n(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(PARALLEL)
    calls = _reassemble(stream_chunks(client, llm, [user("go")]))
    assert sorted(calls) == [0, 1, 2]
    assert [calls[i]["name"] for i in range(3)] == ["get_weather", "get_weather", "calculate"]
    assert [json.loads(calls[i]["arguments"]) for i in range(2)] == [
        {"city": "Paris"},
        {"city": "Tokyo"},
    ]
    assert len({calls[i]["id"] for i in range(3)}) == 3


def test_several_tool_calls_in_one_non_streamed_message(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(PARALLEL)
    choice = chat(client, llm, [user("go")])["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking both."
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_weather", "calculate"]
    assert all(c["type"] == "function" for c in calls)
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Tokyo"}


def test_tool_call_only_reply_has_null_content(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules({"reply": {"tool_calls": [{"name": "calculate"}]}}))
    message = chat(client, llm, [user("go")])["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"]["arguments"] == "{}"


def test_include_usage_sends_a_last_chunk_with_usage_and_no_choices(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules({"reply": {"content": "a b c"}}))
    chunks = stream_chunks(client, llm, [user("hi")], stream_options={"include_usage": True})
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 3
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_usage_and_finish_reason_can_be_overridden(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    reply = {
        "content": "cut",
        "usage": {"prompt_tokens": 1000, "completion_tokens": 7},
        "finish_reason": "length",
    }
    llm = mock_llm(rules({"reply": reply}))
    completion = chat(client, llm, [user("hi")])
    assert completion["usage"] == {
        "prompt_tokens": 1000,
        "completion_tokens": 7,
        "total_tokens": 1007,
    }
    assert completion["choices"][0]["finish_reason"] == "length"


def test_string_arguments_are_sent_verbatim_even_when_not_json(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(
        rules({"reply": {"tool_calls": [{"name": "calculate", "arguments": '{"broken": '}]}})
    )
    calls = _reassemble(stream_chunks(client, llm, [user("go")]))
    assert calls[0]["arguments"] == '{"broken": '


# --- matching ----------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a Weather bot."}
ASSISTANT: JSON = {"role": "assistant", "content": None, "tool_calls": []}

# Each condition: a conversation where it holds, and one where it does not.
CONDITIONS: list[tuple[JSON, JSON, JSON]] = [
    (
        {"last_user_contains": "WEATHER"},
        {"messages": [user("the weather?")]},
        {"messages": [user("hi")]},
    ),
    (
        {"last_role": "tool"},
        {"messages": [user("x"), ASSISTANT, tool("r")]},
        {"messages": [user("x")]},
    ),
    (
        {"last_tool_result_contains": "sunny"},
        {"messages": [user("x"), ASSISTANT, tool("Sunny, 20C")]},
        {"messages": [user("x"), ASSISTANT, tool("rain")]},
    ),
    ({"any_contains": "bot"}, {"messages": [SYSTEM, user("x")]}, {"messages": [user("x")]}),
    (
        {"system_contains": "weather bot"},
        {"messages": [SYSTEM, user("x")]},
        {"messages": [user("weather bot")]},
    ),
    (
        {"tool_results_since_user": 2},
        {"messages": [user("x"), ASSISTANT, tool("a"), tool("b")]},
        {"messages": [user("x"), ASSISTANT, tool("a")]},
    ),
    (
        {"tools_offered": "calculate"},
        {"messages": [user("x")], "tools": TOOLS},
        {"messages": [user("x")]},
    ),
    (
        {"no_tools_offered": True},
        {"messages": [user("x")]},
        {"messages": [user("x")], "tools": TOOLS},
    ),
    (
        {"regex": r"\d+ \+ \d+"},
        {"messages": [user("what is 2 + 3")]},
        {"messages": [user("two plus")]},
    ),
    (
        {"last_user_contains": "paris"},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Paris?"}]}]},
        {"messages": [user("Rome?")]},
    ),
]


@pytest.mark.parametrize(("match", "holds", "fails"), CONDITIONS, ids=lambda v: str(v)[:40])
def test_each_match_condition_selects_its_rule(
    mock_llm: MockLLMFactory, client: httpx.Client, match: JSON, holds: JSON, fails: JSON
) -> None:
    llm = mock_llm(
        rules({"match": match, "reply": {"content": "matched"}}, fallback={"content": "no"})
    )
    assert reply_text(chat(client, llm, **holds)) == "matched"
    assert reply_text(chat(client, llm, **fails)) == "no"


def test_first_matching_rule_answers_and_records_its_name(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(
        rules(
            {
                "name": "specific",
                "match": {"last_user_contains": "weather"},
                "reply": {"content": "A"},
            },
            {"name": "general", "reply": {"content": "B"}},
            {"name": "never", "reply": {"content": "C"}},
        )
    )
    assert reply_text(chat(client, llm, [user("weather")])) == "A"
    assert reply_text(chat(client, llm, [user("hello")])) == "B"
    assert [r["rule"] for r in llm.requests()] == ["specific", "general"]


def test_fallback_answers_when_no_rule_matches(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules({"match": {"last_role": "tool"}, "reply": {"content": "x"}}))
    assert "scripted model" in reply_text(chat(client, llm, [user("hi")]))
    assert llm.requests()[0]["rule"] is None


def test_rule_times_limits_matches_until_reset(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(
        rules({"times": 2, "reply": {"content": "limited"}}, fallback={"content": "after"})
    )
    answers = [reply_text(chat(client, llm, [user("hi")])) for _ in range(3)]
    assert answers == ["limited", "limited", "after"]
    llm.reset()
    assert llm.requests() == []
    assert reply_text(chat(client, llm, [user("hi")])) == "limited"


def test_per_rule_latency_inherits_unset_fields_from_the_script(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    script = rules(
        {"latency": {"token_ms": 0}, "reply": {"content": "x"}},
        latency={"first_token_ms": 300, "token_ms": 0},
    )
    llm = mock_llm(script)
    started = time.monotonic()
    chat(client, llm, [user("hi")])
    assert time.monotonic() - started >= 0.25


# --- placeholders and ids ----------------------------------------------------------------


def test_placeholders_fill_in_user_text_and_tool_results(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    content = "you said {last_user}; last={last_tool_result}; all={tool_results} {json}"
    llm = mock_llm(rules({"reply": {"content": content}}))
    messages = [
        user("old"),
        ASSISTANT,
        tool("stale"),
        user("weather?"),
        ASSISTANT,
        tool("sun"),
        tool("rain"),
    ]
    text = reply_text(chat(client, llm, messages))
    assert text == "you said weather?; last=rain; all=sun; rain {json}"


def test_regex_groups_fill_tool_call_arguments(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    call = {"name": "get_weather", "arguments": {"city": "{regex_1}", "note": 'say "{regex_2}"'}}
    llm = mock_llm(rules({"match": {"regex": r"in (\w+) (\w+)"}, "reply": {"tool_calls": [call]}}))
    message = chat(client, llm, [user("weather in Oslo now")])["choices"][0]["message"]
    arguments = json.loads(message["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"city": "Oslo", "note": 'say "now"'}


def test_tool_call_ids_are_deterministic_per_conversation(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(PARALLEL)

    def ids(messages: list[JSON], stream: bool) -> list[str]:
        if stream:
            calls = _reassemble(stream_chunks(client, llm, messages))
            return [calls[i]["id"] for i in sorted(calls)]
        message = chat(client, llm, messages)["choices"][0]["message"]
        return [c["id"] for c in message["tool_calls"]]

    first = ids([user("go")], stream=False)
    assert ids([user("go")], stream=True) == first
    assert first[0].startswith("call_")
    assert first[0].endswith("_0")
    assert ids([user("go again")], stream=False) != first


# --- faults ------------------------------------------------------------------------------


def fault_rule(fault: JSON, content: str = "fine now") -> JSON:
    return rules({"name": "faulty", "fault": fault, "reply": {"content": content}})


def test_http_429_carries_retry_after_then_the_rule_answers(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "http_429", "retry_after": 3, "times": 2}))
    url = f"{llm.base_url}/chat/completions"
    for _ in range(2):
        response = client.post(url, json={"messages": [user("hi")]})
        assert response.status_code == 429
        assert response.headers["retry-after"] == "3"
        assert set(response.json()["error"]) >= {"message", "type", "code"}
    assert reply_text(chat(client, llm, [user("hi")])) == "fine now"
    assert [r["fault"] for r in llm.requests()] == ["http_429", "http_429", None]


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("http_500", 500),
        ("http_503", 503),
        ("http_400", 400),
        ("http_401", 401),
        ("http_403", 403),
    ],
)
def test_http_faults_answer_with_their_status_and_a_json_error(
    mock_llm: MockLLMFactory, client: httpx.Client, fault: str, status: int
) -> None:
    llm = mock_llm(fault_rule({"type": fault}))
    response = client.post(
        f"{llm.base_url}/chat/completions", json={"messages": [user("hi")], "stream": True}
    )
    assert response.status_code == status
    assert "message" in response.json()["error"]


def test_an_http_fault_can_be_answered_later(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "http_400", "after_ms": 300}))
    started = time.monotonic()
    response = client.post(f"{llm.base_url}/chat/completions", json={"messages": [user("hi")]})
    assert response.status_code == 400
    assert time.monotonic() - started >= 0.3


def test_api_key_match_rejects_one_key_of_a_pool_and_the_log_names_the_key_sent(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    revoked = "sk-test-revoked-0001"
    llm = mock_llm(
        rules(
            {
                "name": "revoked-key",
                "match": {"api_key": revoked},
                "fault": {"type": "http_401", "times": None},
            }
        )
    )
    url = f"{llm.base_url}/chat/completions"
    body = {"messages": [user("hi")]}
    statuses = [
        client.post(url, json=body, headers={"Authorization": f"Bearer {key}"}).status_code
        for key in (revoked, "sk-test-good-0002", revoked.upper())
    ]
    statuses.append(client.post(url, json=body).status_code)
    assert statuses == [401, 200, 200, 200]  # keys compare exactly; no key, no match
    assert [r["api_key"] for r in llm.requests()] == [
        revoked,
        "sk-test-good-0002",
        revoked.upper(),
        None,
    ]


def test_fault_with_null_times_fails_every_request(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "http_500", "times": None}))
    url = f"{llm.base_url}/chat/completions"
    statuses = {client.post(url, json={"messages": [user("hi")]}).status_code for _ in range(4)}
    assert statuses == {500}


def test_drop_mid_stream_raises_in_the_client_after_some_chunks(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "drop_mid_stream", "after_chunks": 2}, "a b c d e f"))
    received: list[str] = []
    body = {"messages": [user("hi")], "stream": True}
    with (
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        client.stream("POST", f"{llm.base_url}/chat/completions", json=body) as response,
    ):
        received.extend(line for line in response.iter_lines() if line.startswith("data: "))
    assert len(received) == 2
    assert "[DONE]" not in "".join(received)
    # The fault is spent: the next request streams to the end on a fresh connection.
    assert stream_lines(client, llm, [user("hi")])[-1] == "[DONE]"


def test_drop_without_streaming_truncates_the_body(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "drop_mid_stream"}))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(f"{llm.base_url}/chat/completions", json={"messages": [user("hi")]})


def test_malformed_chunk_is_one_non_json_line_then_the_stream_carries_on(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "malformed_chunk", "after_chunks": 1}, "all of it"))
    lines = stream_lines(client, llm, [user("hi")])
    bad = []
    for line in lines[:-1]:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            bad.append(line)
    assert len(bad) == 1
    assert lines.index(bad[0]) == 1
    assert lines[-1] == "[DONE]"
    good = [json.loads(line) for line in lines[:-1] if line != bad[0]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in good) == "all of it"


def test_stall_makes_a_client_with_a_short_timeout_time_out(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "stall", "delay_s": 5}))
    with pytest.raises(httpx.ReadTimeout):
        client.post(
            f"{llm.base_url}/chat/completions", json={"messages": [user("hi")]}, timeout=0.3
        )
    assert llm.requests()[0]["fault"] == "stall"


def test_stall_answers_normally_after_the_delay(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "stall", "delay_s": 0.3}))
    started = time.monotonic()
    assert reply_text(chat(client, llm, [user("hi")])) == "fine now"
    assert time.monotonic() - started >= 0.25


# --- latency -----------------------------------------------------------------------------


def test_latency_delays_first_token_and_spaces_chunks(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(
        rules({"reply": {"content": "a b c d e"}}, latency={"first_token_ms": 200, "token_ms": 50})
    )
    body = {"messages": [user("hi")], "stream": True}
    started = time.monotonic()
    with client.stream("POST", f"{llm.base_url}/chat/completions", json=body) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        first_at = time.monotonic() - started
        list(lines)
    total = time.monotonic() - started
    assert first_at >= 0.18
    # 6 more chunks at 50 ms each; loose bounds, the machine is small and noisy.
    assert total >= first_at + 0.25
    assert total < 5


# --- the rest of the API -----------------------------------------------------------------


def test_models_endpoint_announces_a_scripted_model(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules(model="my-script"))
    response = client.get(f"{llm.base_url}/models")
    assert response.headers["x-scripted-model"] == "1"
    assert response.json()["data"] == [
        {"id": "my-script", "object": "model", "created": 0, "owned_by": "orchestrator-scripted"}
    ]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"{not json", "invalid_json"),
        (b'{"model": "x"}', "missing_messages"),
        (b'{"messages": []}', "invalid_request"),
    ],
)
def test_invalid_chat_request_gets_400_with_openai_error(
    mock_llm: MockLLMFactory, client: httpx.Client, content: bytes, code: str
) -> None:
    llm = mock_llm(rules())
    response = client.post(f"{llm.base_url}/chat/completions", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert llm.requests() == []


def test_unknown_route_is_404_and_wrong_method_405(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules())
    assert client.get(f"{llm.url}/v1/embeddings").status_code == 404
    assert client.get(f"{llm.base_url}/chat/completions").status_code == 405


def test_request_log_keeps_bodies_rules_and_faults_in_order(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(fault_rule({"type": "http_500"}))
    client.post(f"{llm.base_url}/chat/completions", json={"messages": [user("one")]})
    stream_lines(client, llm, [user("two")])
    records = llm.requests()
    assert [r["body"]["messages"][0]["content"] for r in records] == ["one", "two"]
    assert [(r["rule"], r["fault"], r["stream"]) for r in records] == [
        ("faulty", "http_500", False),
        ("faulty", None, True),
    ]


def test_set_script_replaces_the_rules(mock_llm: MockLLMFactory, client: httpx.Client) -> None:
    llm = mock_llm(rules({"reply": {"content": "old"}}))
    llm.set_script(rules({"reply": {"content": "new"}}))
    assert reply_text(chat(client, llm, [user("hi")])) == "new"


def test_posting_an_invalid_script_is_rejected_naming_the_field(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm(rules())
    response = client.post(f"{llm.url}/_mock/script", json=rules({"match": {"last_rol": "user"}}))
    assert response.status_code == 400
    assert "rules.0.match.last_rol" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("script", "field"),
    [
        (rules({"match": {"last_rol": "user"}}), "rules.0.match.last_rol"),
        (rules({"match": {"regex": "("}}), "rules.0.match.regex"),
        (rules({"fault": {"type": "http_418"}}), "rules.0.fault.type"),
        (rules({"reply": {"tool_calls": [{"arguments": {}}]}}), "rules.0.reply.tool_calls.0.name"),
        ({"latency": {"first_token_ms": -1}}, "latency.first_token_ms"),
    ],
)
def test_invalid_script_raises_config_error_naming_the_field(script: JSON, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_script(script)


def test_load_script_reads_files_and_rejects_non_json(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(rules({"name": "only"})))
    assert load_script(str(good)).rules[0].name == "only"
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_script(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_script(tmp_path / "missing.json")


async def test_async_server_serves_and_stopping_ends_a_stalled_request() -> None:
    server = MockLLMServer(fault_rule({"type": "stall", "delay_s": 30}))
    async with server, httpx.AsyncClient(trust_env=False, timeout=0.3) as client:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert (await client.get(f"{server.base_url}/models")).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                f"{server.base_url}/chat/completions", json={"messages": [user("hi")]}
            )
        started = time.monotonic()
    assert time.monotonic() - started < 2


# --- the demo script ---------------------------------------------------------------------


def test_demo_script_calls_get_weather_for_two_cities_then_answers(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm()
    llm.set_script(load_script("demo").model_copy(update={"latency": Latency()}))
    question = [user("What's the weather in Berlin and Rome?")]
    message = chat(client, llm, question, tools=TOOLS)["choices"][0]["message"]
    cities = [json.loads(c["function"]["arguments"])["city"] for c in message["tool_calls"]]
    assert cities == ["Berlin", "Rome"]
    follow_up = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]},
    ]
    follow_up += [tool("Berlin: 18C sunny"), tool("Rome: 25C clear")]
    answer = reply_text(chat(client, llm, follow_up, tools=TOOLS))
    assert "Berlin: 18C sunny; Rome: 25C clear" in answer


def test_demo_script_calculates_and_otherwise_says_it_is_scripted(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    llm = mock_llm()
    llm.set_script(load_script("demo").model_copy(update={"latency": Latency()}))
    message = chat(client, llm, [user("Please calculate 12 * (3 + 4)")], tools=TOOLS)["choices"][0][
        "message"
    ]
    call = message["tool_calls"][0]["function"]
    assert call["name"] == "calculate"
    assert json.loads(call["arguments"]) == {"expression": "12 * (3 + 4)"}
    chunks = stream_chunks(client, llm, [user("Hello!")], tools=TOOLS)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "scripted model" in text


def test_example_script_in_the_docs_is_valid_and_answers_as_described(
    mock_llm: MockLLMFactory, client: httpx.Client
) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "scripted-model.md").read_text()
    example = json.loads(doc.split("```json", 1)[1].split("```", 1)[0])
    llm = mock_llm(example)
    message = chat(client, llm, [user("Weather please")])["choices"][0]["message"]
    assert message["tool_calls"][0]["function"]["name"] == "get_weather"
    answer = chat(client, llm, [user("Weather please"), ASSISTANT, tool("sunny")])
    assert reply_text(answer) == "It is sunny in Paris."
