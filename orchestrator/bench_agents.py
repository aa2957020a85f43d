"""The agent `orchestrator bench` runs, in-process and on worker processes.

Like any agents module it builds its LLM interface at import from its own configuration:
ORCHESTRATOR_BENCH_LLM_URL, which the bench sets to the scripted model it starts. What the
model answers depends on the message (see `orchestrator.bench.bench_script`): a one-word
reply at zero latency, a long fast stream, or a very long stream to abort.
"""

from __future__ import annotations

import os
from typing import Any

from orchestrator import OpenAICompatible, llm_chat

LLM_URL_ENV = "ORCHESTRATOR_BENCH_LLM_URL"

llm = OpenAICompatible(
    api_keys="scripted-no-key-needed",
    model_name="scripted",
    base_url=os.environ.get(LLM_URL_ENV, "http://127.0.0.1:8765/v1"),
    retry_delay=0.05,
)


@llm_chat(llm_interface=llm, stream=True)
async def bench_chat(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are the benchmark agent. Answer as briefly as you can."""
    pass  # the body never runs: the docstring is the prompt
