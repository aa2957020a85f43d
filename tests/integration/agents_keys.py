"""Agents for the key cool-down tests on a real worker process (test_llm_keys.py).

Configured from the worker's environment, like any agents module:

    TEST_LLM_URL           base URL of the scripted model the test started
    TEST_KEY_COOLDOWN_S    how long a rejected key rests (the default is a minute)

`flaky_chat` calls the model with FLAKY_KEY, which the test's script rejects once;
`steady_chat` calls it with STEADY_KEY, which is never rejected.
"""

from __future__ import annotations

import os
from typing import Any

from orchestrator import OpenAICompatible, llm_chat

FLAKY_KEY = "sk-test-flaky-3c9d1e7a55f0"
STEADY_KEY = "sk-test-steady-91b2c4d6e8f0"
FLAKY_MODEL = "scripted-flaky"

_URL = os.environ.get("TEST_LLM_URL", "http://127.0.0.1:9/v1")
_COOLDOWN_S = float(os.environ.get("TEST_KEY_COOLDOWN_S", "60"))

flaky_llm = OpenAICompatible(
    [FLAKY_KEY], FLAKY_MODEL, _URL, max_retries=0, key_cooldown_s=_COOLDOWN_S
)
steady_llm = OpenAICompatible(STEADY_KEY, "scripted-steady", _URL, max_retries=0)


@llm_chat(llm_interface=flaky_llm, stream=True)
async def flaky_chat(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are the agent whose key gets rejected."""


@llm_chat(llm_interface=steady_llm, stream=True)
async def steady_chat(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are the agent whose key always works."""
