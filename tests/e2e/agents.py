"""Agents for the API tests: a weather assistant and a forking city researcher, both on
the scripted model.

Like any agents module it builds its LLM at import, here from ORCHESTRATOR_API_TEST_LLM_URL,
which the `scripted_llm` fixture (tests/fixtures_api.py) sets before a worker imports this.
Not `orchestrator.demo_agents`: that module's URL is fixed by whoever imports it first.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator
from typing import Any

from orchestrator import OpenAICompatible, SelfReference, llm_chat, tool

LLM_URL_ENV = "ORCHESTRATOR_API_TEST_LLM_URL"
# Long enough to watch a fork's tool call in a browser, short enough for a test.
SLOW_LOOKUP_S = 1.0


@tool(name="get_weather", description="Get the current weather for a city")
async def get_weather(city: str, event_emitter: Any = None) -> dict[str, Any]:
    """Look up the weather.

    Args:
        city: The city name, e.g. "Paris".
    """
    if event_emitter is not None:
        await event_emitter.emit("lookup", {"city": city})
    await asyncio.sleep(0.2)
    return {"city": city, "condition": "sunny", "temperature_c": 20}


@tool(name="slow_lookup", description="Look up facts about a city (slow)")
async def slow_lookup(
    city: str, seconds: float = SLOW_LOOKUP_S, event_emitter: Any = None
) -> dict[str, Any]:
    """Look up a city, slowly, like a sluggish upstream API.

    Args:
        city: The city name, e.g. "Oslo".
        seconds: How long the lookup takes.
    """
    if event_emitter is not None:
        await event_emitter.emit("lookup_started", {"city": city})
    await asyncio.sleep(seconds)
    return {"city": city, "found": True}


llm = OpenAICompatible(
    api_keys="scripted-no-key-needed",
    model_name="scripted",
    base_url=os.environ.get(LLM_URL_ENV, "http://127.0.0.1:9/v1"),
    retry_delay=0.1,
)


@llm_chat(llm_interface=llm, toolkit=[get_weather], stream=True)
async def weather_chat(
    message: str, history: list[dict[str, Any]] | None = None
) -> AsyncGenerator[tuple[str, list[dict[str, Any]]], None]:
    """You are a weather assistant. Use the tool when asked about the weather."""
    yield "", []  # never runs: the docstring is the prompt


# A SelfReference agent: it gets selfref_fork_spawn / selfref_fork_gather_all, and every
# fork it spawns is its own run on a worker, publishing into the root's session stream.
@llm_chat(
    llm_interface=llm,
    toolkit=[slow_lookup],
    self_reference=SelfReference(),
    self_reference_key="city_forker",
    stream=True,
)
async def city_forker(
    message: str, history: list[dict[str, Any]] | None = None
) -> AsyncGenerator[tuple[str, list[dict[str, Any]]], None]:
    """You research cities. Split the work into one fork per city, then gather them."""
    yield "", []  # never runs: the docstring is the prompt
