"""The PyRepl demo's agent: a data analyst that answers by writing and running Python.

User code as far as the orchestrator is concerned, like `orchestrator.demo_agents`: a
worker started with `--agents orchestrator.pyrepl.demo_agents` serves
`orchestrator.pyrepl.demo_agents:data_analyst`. `orchestrator demo --pyrepl` runs it on
the scripted model (ORCHESTRATOR_DEMO_LLM_URL; ORCHESTRATOR_DEMO_LLM_MODEL and
ORCHESTRATOR_DEMO_LLM_KEY point it at a real model instead).

Its interpreter is isolated when the worker runs as root; elsewhere the demo runs it
unisolated (`isolate="preferred"`), and every result says so.
"""

from __future__ import annotations

import os
from typing import Any

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.pyrepl import PyRepl, SandboxLimits, SandboxPolicy

repl = PyRepl(SandboxLimits(wall_s=30, cpu_s=10, memory_mb=256), SandboxPolicy(isolate="preferred"))

llm = OpenAICompatible(
    api_keys=os.environ.get("ORCHESTRATOR_DEMO_LLM_KEY", "scripted-no-key-needed"),
    model_name=os.environ.get("ORCHESTRATOR_DEMO_LLM_MODEL", "scripted"),
    base_url=os.environ.get("ORCHESTRATOR_DEMO_LLM_URL", "http://127.0.0.1:8765/v1"),
    retry_delay=0.2,
)


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
