"""The workers' agents module for the batch tests (test_deluge_batches.py): the seed's
tools as `Tool`s, which a batch may name ("tests.integration.agents_deluge:get_weather")
to run each item as an agent loop. (An agents module needs one agent: `unused_chat`.)"""

from __future__ import annotations

from typing import Any

from orchestrator import OpenAICompatible, llm_chat
from orchestrator.deluge import Tool


def _weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"The weather in {city} is sunny and 72F"


async def _double(number: int) -> int:
    """Double a number."""
    return 2 * number


get_weather = Tool.from_function(_weather, name="get_weather")
double = Tool.from_function(_double, name="double")
not_a_tool = _weather

_unused = OpenAICompatible("", "unused", "http://127.0.0.1:9/v1", max_retries=0)


@llm_chat(llm_interface=_unused)
async def unused_chat(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """Never called: an agents module needs one agent."""
