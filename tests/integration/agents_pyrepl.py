"""Agents with a PyRepl, for the distributed PyRepl tests (workers import this module).

Configured from the worker's environment like `agents_for_tests`: TEST_LLM_URL is the
scripted model the test started.
"""

from __future__ import annotations

import os
from typing import Any

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.pyrepl import PyRepl, SandboxLimits

llm = OpenAICompatible(
    "sk-scripted",
    "scripted",
    os.environ.get("TEST_LLM_URL", "http://127.0.0.1:9/v1"),
    max_retries=2,
    retry_delay=0.1,
)

repl = PyRepl(SandboxLimits(wall_s=30, cpu_s=20, memory_mb=256))


@llm_chat(
    llm_interface=llm,
    toolkit=repl.toolset,
    self_reference=SelfReference(),
    self_reference_key="analyst",
    stream=True,
)
async def analyst(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a test analyst: you answer by running Python."""
