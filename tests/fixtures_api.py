"""Fixtures for the HTTP API tests (tests/*/test_api_*.py, tests/e2e/).

SCRIPT          the scripted model's rules: weather questions call a tool; "answer
                slowly" (or weather + "slowly") streams a long answer, time enough to
                watch it and abort it; "split the cities" makes `city_forker` spawn one
                fork per city (FORK_CITIES) and gather them, each fork calling the slow
                tool and then streaming a long answer (the Cairo fork also spawns a fork
                of its own, for Giza: SUB_FORK); "check the cities" spawns forks that
                end one after another (FORK_PACES) and completes once it has gathered
                them; "grow a tree" makes a tree of depth 3 (TREE_BRANCHES forks, each
                with TREE_TWIGS forks, each with one fork: TREE_AGENTS agents in all);
                anything else gets a greeting
scripted_llm    one scripted model for the whole session (agents modules fix their
                LLM URL at import, so the URL must not change between tests)
api_settings    Settings on the real Redis with this test's key prefix (keys deleted after)
make_api        factory: make_api(api_keys=..., **create_app kwargs) -> httpx.AsyncClient
                talking to the app in-process (ASGITransport); closed at teardown
worker          an in-process worker serving tests.e2e.agents on api_settings
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from orchestrator.api import create_app
from orchestrator.keys import Keys
from orchestrator.mock_llm.testing import MockLLMThread
from orchestrator.settings import Settings

AGENTS_MODULE = "tests.e2e.agents"
AGENT = f"{AGENTS_MODULE}:weather_chat"
FORKING_AGENT = f"{AGENTS_MODULE}:city_forker"
FORK_CITIES = ("Oslo", "Lima", "Cairo")
SUB_FORK = ("Cairo", "Giza")  # (the fork that forks again, the city of its own fork)
FORK_PACES = {"Oslo": 0.5, "Lima": 1.5, "Cairo": 2.5}  # seconds each fork's lookup takes
LLM_URL_ENV = "ORCHESTRATOR_API_TEST_LLM_URL"

TREE_BRANCHES, TREE_TWIGS = 3, 2
TREE_AGENTS = 1 + TREE_BRANCHES + 2 * TREE_BRANCHES * TREE_TWIGS

SLOW_TEXT = " ".join(f"word{i}" for i in range(400))
SLOW_LATENCY = {"first_token_ms": 50, "token_ms": 40}


def _spawn(message: str) -> dict[str, Any]:
    return {"name": "selfref_fork_spawn", "arguments": {"message": message}}


GATHER: dict[str, Any] = {"name": "selfref_fork_gather_all", "arguments": {}}


# A fork's last user message ends "Task: <the message its parent spawned it with>".
FORK_RULES: list[dict[str, Any]] = [
    {
        "name": "fork-city-lookup-and-fork",
        "match": {"last_role": "user", "last_user_contains": f"Task: look up {SUB_FORK[0]}"},
        "reply": {
            "content": f"Looking up {SUB_FORK[0]}; {SUB_FORK[1]} in a fork of my own.",
            "tool_calls": [
                {"name": "slow_lookup", "arguments": {"city": SUB_FORK[0]}},
                _spawn(f"look up {SUB_FORK[1]}"),
            ],
        },
    },
    {
        "name": "fork-city-lookup",
        "match": {"last_role": "user", "regex": r"Task: look up (\w+)"},
        "reply": {
            "content": "Looking up {regex_1}.",
            "tool_calls": [{"name": "slow_lookup", "arguments": {"city": "{regex_1}"}}],
        },
    },
    {
        "name": "fork-city-report",
        "match": {"last_role": "tool", "last_user_contains": "Task: look up"},
        "reply": {"content": SLOW_TEXT},
        "latency": SLOW_LATENCY,
    },
    {
        "name": "fork-root-split",
        "match": {"last_role": "user", "last_user_contains": "split the cities"},
        "reply": {
            "content": "One fork per city.",
            "tool_calls": [
                *(_spawn(f"look up {city}") for city in FORK_CITIES),
                GATHER,
            ],
        },
    },
    {
        "name": "fork-root-answer",
        "match": {"last_role": "tool", "last_user_contains": "split the cities"},
        "reply": {"content": "Gathered: {last_tool_result}"},
    },
    *(
        {
            "name": f"fork-paced-{city}",
            "match": {"last_role": "user", "last_user_contains": f"Task: check {city}"},
            "reply": {
                "content": f"Checking {city}.",
                "tool_calls": [
                    {"name": "slow_lookup", "arguments": {"city": city, "seconds": seconds}}
                ],
            },
        }
        for city, seconds in FORK_PACES.items()
    ),
    {
        "name": "fork-paced-answer",
        "match": {"last_role": "tool", "last_user_contains": "Task: check"},
        "reply": {"content": "Checked: {last_tool_result}"},
    },
    {
        "name": "fork-root-paced",
        "match": {"last_role": "user", "last_user_contains": "check the cities"},
        "reply": {
            "content": "One fork per city, each at its own pace.",
            "tool_calls": [
                *(_spawn(f"check {city}") for city in FORK_PACES),
                GATHER,
            ],
        },
    },
    {
        "name": "fork-root-paced-answer",
        "match": {"last_role": "tool", "last_user_contains": "check the cities"},
        "reply": {"content": "All cities checked."},
    },
]

# A tree of depth 3: root -> branch N -> twig N.M -> leaf N.M, each parent gathering.
TREE_RULES: list[dict[str, Any]] = [
    {
        "name": "tree-root",
        "match": {"last_role": "user", "last_user_contains": "grow a tree"},
        "reply": {
            "content": "Branching out.",
            "tool_calls": [
                *(_spawn(f"branch {b}") for b in range(1, TREE_BRANCHES + 1)),
                GATHER,
            ],
        },
    },
    {
        "name": "tree-branch",
        "match": {"last_role": "user", "regex": r"Task: branch (\d+)$"},
        "reply": {
            "content": "Twigs of branch {regex_1}.",
            "tool_calls": [
                *(_spawn(f"twig {{regex_1}}.{t}") for t in range(1, TREE_TWIGS + 1)),
                GATHER,
            ],
        },
    },
    {
        "name": "tree-twig",
        "match": {"last_role": "user", "regex": r"Task: twig ([\d.]+)$"},
        "reply": {"content": "A leaf.", "tool_calls": [_spawn("leaf {regex_1}"), GATHER]},
    },
    {
        "name": "tree-leaf",
        "match": {"last_role": "user", "regex": r"Task: leaf ([\d.]+)$"},
        "reply": {"content": "Leaf {regex_1} is green."},
    },
    {
        "name": "tree-gathered",
        "match": {"last_role": "tool", "any_contains": "grow a tree"},
        "reply": {"content": "Gathered."},
    },
]

SCRIPT: dict[str, Any] = {
    "model": "scripted-api-tests",
    "latency": {"first_token_ms": 10, "token_ms": 2},
    "rules": [
        *TREE_RULES,
        *FORK_RULES,
        {
            "name": "slow-weather-answer",
            "match": {"last_role": "tool", "last_user_contains": "slowly"},
            "reply": {"content": SLOW_TEXT},
            "latency": SLOW_LATENCY,
        },
        {
            "name": "weather-answer",
            "match": {"last_role": "tool"},
            "reply": {"content": "Paris and Tokyo are both sunny today."},
        },
        {
            "name": "slow-answer",
            "match": {"last_role": "user", "last_user_contains": "answer slowly"},
            "reply": {"content": SLOW_TEXT},
            "latency": SLOW_LATENCY,
        },
        {
            "name": "weather-call",
            "match": {"last_role": "user", "last_user_contains": "weather"},
            "reply": {
                "content": "Let me check both cities.",
                "tool_calls": [
                    {"name": "get_weather", "arguments": {"city": "Paris"}},
                    {"name": "get_weather", "arguments": {"city": "Tokyo"}},
                ],
            },
        },
    ],
    "fallback": {"content": "Hello from the scripted model."},
}

ApiFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[MockLLMThread]:
    server = MockLLMThread(SCRIPT).start()
    previous = os.environ.get(LLM_URL_ENV)
    os.environ[LLM_URL_ENV] = server.base_url
    try:
        yield server
    finally:
        server.stop()
        if previous is None:
            os.environ.pop(LLM_URL_ENV, None)
        else:
            os.environ[LLM_URL_ENV] = previous


@pytest.fixture
def api_settings(redis_url: str, keys: Keys) -> Settings:
    # `keys` deletes this test's keys at teardown.
    return Settings(redis_url=redis_url, key_prefix=keys.prefix)


@pytest.fixture
async def make_api(api_settings: Settings) -> AsyncIterator[ApiFactory]:
    apps: list[Any] = []
    clients: list[httpx.AsyncClient] = []

    def make(settings: Settings | None = None, **kwargs: Any) -> httpx.AsyncClient:
        app = create_app(settings or api_settings, **kwargs)
        apps.append(app)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api", timeout=10
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    for app in apps:
        await app.state.api.client.close()


@pytest.fixture
async def worker(api_settings: Settings, scripted_llm: MockLLMThread) -> AsyncIterator[Any]:
    from workers.worker import create_worker

    instance = await create_worker(api_settings, [AGENTS_MODULE], handle_signals=False)
    task = asyncio.create_task(instance.async_run())
    try:
        yield instance
    finally:
        await instance.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def parse_sse(text: str) -> list[dict[str, Any]]:
    """The messages of an SSE body: {"id", "event", "data"} (comments dropped)."""
    import json

    messages = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            messages.append(fields)
    return messages
