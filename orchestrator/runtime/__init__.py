"""The ReAct runtime: `llm_chat`, the resumable loop, tools and SelfReference.

llm_chat / AgentSpec / agent_spec    the decorator and what a worker needs to run it
llm_function / FunctionSpec          typed functions (the answer parsed into the return type)
run_turn / TurnState / OriginContext the loop as a resumable state machine
tool / Tool                          functions the model can call
SelfReference                        durable agent memory and its tools
"""

from orchestrator.runtime.agent import AgentSpec, agent_spec
from orchestrator.runtime.chat import llm_chat
from orchestrator.runtime.emitter import NoOpEventEmitter, ToolEventEmitter
from orchestrator.runtime.function import FunctionSpec, llm_function
from orchestrator.runtime.loop import run_turn
from orchestrator.runtime.selfref import SelfRefContext, SelfReference
from orchestrator.runtime.state import OriginContext, ToolOutcome, TurnError, TurnState
from orchestrator.runtime.tools import Tool, tool

__all__ = [
    "AgentSpec",
    "FunctionSpec",
    "NoOpEventEmitter",
    "OriginContext",
    "SelfRefContext",
    "SelfReference",
    "Tool",
    "ToolEventEmitter",
    "ToolOutcome",
    "TurnError",
    "TurnState",
    "agent_spec",
    "llm_chat",
    "llm_function",
    "run_turn",
    "tool",
]
