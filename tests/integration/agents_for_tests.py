"""Agents the distributed integration tests run on real worker processes.

Workers import this module with `--agents tests.integration.agents_for_tests`. Like any
agents module it is configured at its edge, from the environment of the worker process:

    TEST_LLM_URL    base URL of the scripted model the test started
    TEST_TOOL_LOG   file every tool call appends one line to ("<tool> <pid> <args>"), so a
                    test can count tool executions across processes (and across a SIGKILL)
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from orchestrator import OpenAICompatible, SelfReference, llm_chat, tool

_TOOL_LOG = os.environ.get("TEST_TOOL_LOG", "")


def _record(name: str, **arguments: Any) -> None:
    """Append one line per tool execution; written and flushed before the tool's work, so
    a tool killed mid-way still counts as started."""
    if not _TOOL_LOG:
        return
    line = f"{name} {os.getpid()} {json.dumps(arguments, sort_keys=True)}\n"
    with open(_TOOL_LOG, "a", encoding="utf-8") as log:
        log.write(line)
        log.flush()
        os.fsync(log.fileno())


@tool(name="get_weather", description="Get the current weather for a city")
async def get_weather(city: str) -> dict[str, Any]:
    """Look up the weather (fast).

    Args:
        city: The city name, e.g. "Paris".
    """
    _record("get_weather", city=city)
    await asyncio.sleep(0.05)
    return {"city": city, "condition": "light rain", "temperature_c": 14}


@tool(name="slow_tool", description="Do some slow work")
async def slow_tool(seconds: float) -> str:
    """Sleep for a while, like a slow upstream API.

    Args:
        seconds: How long to work.
    """
    _record("slow_tool", seconds=seconds)
    await asyncio.sleep(seconds)
    return f"worked for {seconds} s"


llm = OpenAICompatible(
    "sk-scripted",
    "scripted",
    os.environ.get("TEST_LLM_URL", "http://127.0.0.1:9/v1"),
    max_retries=2,
    retry_delay=0.1,
)


@llm_chat(llm_interface=llm, toolkit=[get_weather, slow_tool], stream=True)
async def assistant(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a test assistant. Use the tools when asked."""


@llm_chat(llm_interface=llm, stream=True)
async def chatter(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a test assistant without tools."""


@tool(name="fan_out", description="Spawn forks from tool code and gather them")
async def fan_out(count: int, task: str, runtime: Any) -> dict[str, Any]:
    """Spawn `count` forks working on `task`, then gather them all (tool-code forks).

    Args:
        count: How many forks to spawn.
        task: The task each fork gets (numbered).
    """
    _record("fan_out", count=count, task=task)
    for i in range(count):
        await runtime.selfref.fork.spawn(f"{task} {i}")
    results = await runtime.selfref.fork.gather_all()
    return {
        "gathered": len(results),
        "statuses": sorted({r["status"] for r in results.values()}),
    }


# Forks are SelfReference primitives: this agent can fork (and its forks can too).
@llm_chat(
    llm_interface=llm,
    toolkit=[get_weather, slow_tool, fan_out],
    self_reference=SelfReference(),
    self_reference_key="forker",
    stream=True,
)
async def forker(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a test agent that splits work into forks."""


# Memory isolation: a SelfReference agent whose memory lives in its session (the default).
@llm_chat(
    llm_interface=llm,
    toolkit=[slow_tool],
    self_reference=SelfReference(),
    self_reference_key="memo",
    stream=True,
)
async def memo(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a test assistant that remembers the conversation."""


# The opt-in: one memory for every session of a tenant (never shared across tenants).
@llm_chat(
    llm_interface=llm,
    self_reference=SelfReference(memory_scope="tenant"),
    self_reference_key="tenant-memo",
    stream=True,
)
async def tenant_memo(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a test assistant that remembers every session of your tenant."""
