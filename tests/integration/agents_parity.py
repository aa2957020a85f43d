"""Agents of the parity tests (issue 10), run by worker processes started with
`--agents tests.integration.agents_parity`. Configured from the worker's environment:
TEST_LLM_URL is the scripted model's base URL."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from orchestrator import OpenAICompatible, SelfReference, llm_chat, llm_function, tool

llm = OpenAICompatible(
    "sk-scripted",
    "scripted",
    os.environ.get("TEST_LLM_URL", "http://127.0.0.1:9/v1"),
    max_retries=2,
    retry_delay=0.1,
)


class Sentiment(BaseModel):
    label: str
    score: float


@tool(name="word_count", description="Count the words of a text")
async def word_count(text: str) -> int:
    return len(text.split())


@llm_function(llm_interface=llm)
async def classify(text: str) -> Sentiment:
    """Classify the sentiment of the text."""


@llm_function(llm_interface=llm, toolkit=[word_count])
async def count_words(text: str) -> int:
    """Count the words of the text with the tool."""


# Forks: the same agent runs its fork tree in-process (a plain call) and on workers.
@llm_chat(
    llm_interface=llm,
    self_reference=SelfReference(),
    self_reference_key="planner",
    enable_event=True,
)
async def planner(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You plan by splitting work into forks."""
