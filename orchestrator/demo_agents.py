"""The demo's agents: a weather/calculator assistant on the scripted model, which can
fork sub-agents (it has a SelfReference) to research several cities in parallel; and
(`orchestrator demo --pyrepl`) a data analyst that answers by writing and running Python
in its sandboxed interpreter (a PyRepl).

This module is user code as far as the orchestrator is concerned: a worker started with
`--agents orchestrator.demo_agents` serves `orchestrator.demo_agents:weather_chat`. Like
any agents module it builds its LLM interface at import, from its own configuration: here
the environment variable ORCHESTRATOR_DEMO_LLM_URL, which `orchestrator demo` sets to the
scripted model it starts (or point it at any OpenAI-compatible endpoint, with
ORCHESTRATOR_DEMO_LLM_MODEL and ORCHESTRATOR_DEMO_LLM_KEY, or ORCHESTRATOR_DEMO_LLM_KEY_FILE
naming a file that holds the key: a mounted secret, which `ps` and `env` do not show).
Several keys, separated by commas or new lines, make a key pool.
"""

from __future__ import annotations

import ast
import asyncio
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator import OpenAICompatible, SelfReference, llm_chat, tool
from orchestrator.pyrepl import PyRepl, SandboxLimits, SandboxPolicy

_CONDITIONS = {
    "paris": ("light rain", 14),
    "tokyo": ("clear skies", 21),
    "london": ("overcast", 11),
    "new york": ("sunny", 18),
}


@tool(name="get_weather", description="Get the current weather for a city")
async def get_weather(city: str, event_emitter: Any = None) -> dict[str, Any]:
    """Look up the weather.

    Args:
        city: The city name, e.g. "Paris".
    """
    if event_emitter is not None:
        await event_emitter.emit("lookup", {"city": city, "source": "demo weather table"})
    await asyncio.sleep(0.3)  # a slow upstream API
    condition, temp = _CONDITIONS.get(city.lower(), ("unknown", 15))
    return {"city": city, "condition": condition, "temperature_c": temp}


_OPS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.operand)))
    raise ValueError("only numbers and + - * / ** are allowed")


@tool(name="calculate", description="Evaluate an arithmetic expression")
def calculate(expression: str) -> str:
    """Safe arithmetic.

    Args:
        expression: For example "17 * 23".
    """
    value = _evaluate(ast.parse(expression, mode="eval"))
    return str(int(value)) if value == int(value) else str(value)


def _api_keys(variable: str, default: str) -> list[str]:
    """The keys in `variable`, or in the file `variable`_FILE names (comma or line
    separated)."""
    path = os.environ.get(variable + "_FILE")
    raw = Path(path).read_text(encoding="utf-8") if path else os.environ.get(variable) or default
    return [key.strip() for key in raw.replace("\n", ",").split(",") if key.strip()]


llm = OpenAICompatible(
    api_keys=_api_keys("ORCHESTRATOR_DEMO_LLM_KEY", "scripted-no-key-needed"),
    model_name=os.environ.get("ORCHESTRATOR_DEMO_LLM_MODEL", "scripted"),
    base_url=os.environ.get("ORCHESTRATOR_DEMO_LLM_URL", "http://127.0.0.1:8765/v1"),
    retry_delay=0.2,
)


@llm_chat(
    llm_interface=llm,
    toolkit=[get_weather, calculate],
    self_reference=SelfReference(),
    stream=True,
)
async def weather_chat(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a helpful weather and arithmetic assistant. Use the tools when asked about
    the weather or to calculate, and answer concisely. For several independent lookups,
    fork one sub-agent per lookup and gather their results."""
    pass  # the body never runs: the docstring is the prompt


# Isolated when the worker runs as root; elsewhere the demo runs the interpreter
# unisolated (isolate="preferred") and every result says so.
repl = PyRepl(SandboxLimits(wall_s=30, cpu_s=10, memory_mb=256), SandboxPolicy(isolate="preferred"))


@llm_chat(
    llm_interface=llm,
    toolkit=repl.toolset,
    self_reference=SelfReference(),
    self_reference_key="data_analyst",
    stream=True,
)
async def data_analyst(message: str, history: list[dict[str, Any]] | None = None) -> None:
    """You are a data analyst. Answer questions about data by writing Python and running it
    with execute_code (your variables persist between calls); report what the code found."""
    pass  # the body never runs: the docstring is the prompt
