"""The seed's lm-deluge chat loops (tests/seed_deluge_chat_loops.py, the import renamed)
run non-interactively: `input()` returns scripted lines, the models are scripted models
over real HTTP (claude-4-sonnet on the Anthropic route, the GPT names on OpenAI's)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests import seed_deluge_chat_loops as seed
from tests.deluge_models import restore_registry, use_scripted
from tests.fixtures_llm import MockLLMFactory

pytestmark = pytest.mark.timeout(30)

ECHO = {"fallback": {"content": "You said: {last_user}"}}
BROKEN = {"rules": [{"reply": {"content": "x"}, "fault": {"type": "http_500", "times": None}}]}
TOOLS = {
    "rules": [
        {
            "match": {"last_user_contains": "weather", "last_role": "user"},
            "reply": {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        },
        {
            "match": {"last_user_contains": "calculate", "last_role": "user"},
            "reply": {"tool_calls": [{"name": "calculate", "arguments": {"expression": "6*7"}}]},
        },
        {"match": {"last_role": "tool"}, "reply": {"content": "Result: {last_tool_result}"}},
    ],
    "fallback": {"content": "You said: {last_user}"},
}

Step = str | Callable[[], str]


@pytest.fixture(autouse=True)
def _registry() -> Iterator[None]:
    yield from restore_registry()


@pytest.fixture
def typed(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[Step]], None]:
    """`typed([...])`: what the user types, line by line; a callable runs when its line
    is asked for and returns the line (to change a model between turns)."""

    def feed(steps: list[Step]) -> None:
        pending = iter(steps)

        def fake_input(prompt: str = "") -> str:
            step = next(pending)
            return step() if callable(step) else step

        monkeypatch.setattr("builtins.input", fake_input)

    return feed


def turns(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("Assistant", "Error"))]


async def test_chat_loop_keeps_history(
    mock_llm: MockLLMFactory,
    typed: Callable[[list[Step]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    llm = mock_llm(ECHO)
    use_scripted({"gpt-4o-mini": llm})
    typed(["hello", "", "how are you", "quit"])
    await seed.chat_loop()
    assert turns(capsys.readouterr().out) == [
        "Assistant: You said: hello",
        "Assistant: You said: how are you",
    ]
    second = llm.requests()[1]["body"]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]


async def test_chat_with_commands_history_and_clear(
    mock_llm: MockLLMFactory,
    typed: Callable[[list[Step]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    llm = mock_llm(ECHO)
    use_scripted({"gpt-4o-mini": llm})
    typed(["first", "history", "clear", "second", "quit"])
    await seed.chat_with_commands()
    out = capsys.readouterr().out
    assert " 2. user: first" in out
    assert " 3. assistant: You said: first" in out
    assert "History cleared!" in out
    after_clear = llm.requests()[1]["body"]["messages"]
    assert [m["role"] for m in after_clear] == ["system", "user"]
    assert llm.requests()[1]["body"]["max_tokens"] == 500


async def test_chat_with_tools_runs_the_tools(
    mock_llm: MockLLMFactory,
    typed: Callable[[list[Step]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_scripted({"gpt-4o-mini": mock_llm(TOOLS)})
    typed(["what's the weather?", "calculate it", "quit"])
    await seed.chat_with_tools()
    assert turns(capsys.readouterr().out) == [
        "Assistant: Result: The weather in Paris is sunny and 72F",
        "Assistant: Result: 42",
    ]


def test_sync_chat_loop(
    mock_llm: MockLLMFactory,
    typed: Callable[[list[Step]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    use_scripted({"gpt-4o-mini": mock_llm(ECHO)})
    typed(["one", "two", "quit"])
    seed.sync_chat_loop()
    assert turns(capsys.readouterr().out) == [
        "Assistant: You said: one",
        "Assistant: You said: two",
    ]


def answered_by(out: str) -> list[str]:
    return [line.split("(")[1].split(")")[0] for line in turns(out) if line.startswith("Assistant")]


async def test_resilient_chat_falls_back_and_sticks(
    mock_llm: MockLLMFactory,
    typed: Callable[[list[Step]], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The preferred model fails mid-conversation: that turn falls back to the other
    model, and the conversation then sticks to the model that answered (lm-deluge's
    `prefer_model="last"`: `with_response` records it), also once the first recovers."""
    servers = {"claude-4-sonnet": mock_llm(ECHO), "gpt-4.1": mock_llm(ECHO)}
    use_scripted(servers)
    first: list[str] = []

    def break_the_sticky_model() -> str:
        first.append(next(name for name, s in servers.items() if s.requests()))
        servers[first[0]].set_script(BROKEN)
        return "three"

    def recover() -> str:
        servers[first[0]].set_script(ECHO)
        return "five"

    typed(["one", "two", break_the_sticky_model, "four", recover, "six", "quit"])
    await seed.resilient_chat()
    other = next(name for name in servers if name != first[0])
    assert answered_by(capsys.readouterr().out) == [first[0]] * 2 + [other] * 4
    # the failing model was tried once for turn three, then never again
    assert sum(r["fault"] == "http_500" for r in servers[first[0]].requests()) == 1
    # the fallback saw the whole conversation, including the other model's answers
    history = servers[other].requests()[0]["body"]["messages"]
    assert [m["role"] for m in history][-5:] == ["user", "assistant", "user", "assistant", "user"]


async def test_a_named_preference_returns_once_its_model_recovers(
    mock_llm: MockLLMFactory,
) -> None:
    from orchestrator.deluge import Conversation, LLMClient

    servers = {"claude-4-sonnet": mock_llm(ECHO), "gpt-4.1": mock_llm(ECHO)}
    use_scripted(servers)
    client = LLMClient(["claude-4-sonnet", "gpt-4.1"], model_weights=[0.7, 0.3])
    conv = Conversation().system("You are a helpful assistant.")
    used: list[str | None] = []
    for turn, script in enumerate([ECHO, BROKEN, BROKEN, ECHO, ECHO]):
        servers["claude-4-sonnet"].set_script(script)
        response = await client.start(conv.user(f"turn {turn}"), prefer_model="claude-4-sonnet")
        conv = conv.with_response(response)
        used.append(response.model_internal)
    assert used == ["claude-4-sonnet", "gpt-4.1", "gpt-4.1", "claude-4-sonnet", "claude-4-sonnet"]


def test_the_first_model_follows_the_weights(mock_llm: MockLLMFactory) -> None:
    from orchestrator.deluge import LLMClient

    servers = {"claude-4-sonnet": mock_llm(ECHO), "gpt-4.1": mock_llm(ECHO)}
    use_scripted(servers)
    client = LLMClient(
        ["claude-4-sonnet", "gpt-4.1"],
        model_weights=[0.7, 0.3],
        max_tokens_per_minute=10**7,
        progress="none",
    )
    responses = client.process_prompts_sync([f"p{i}" for i in range(200)])
    share = sum(r.model_internal == "claude-4-sonnet" for r in responses) / 200
    assert 0.55 < share < 0.85  # 0.7 expected; this band fails about once in 10^5 runs
