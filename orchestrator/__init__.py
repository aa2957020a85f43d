"""orchestrator: SimpleLLMFunc-style agents, run as arq jobs with events on Redis streams.

Code written for SimpleLLMFunc runs after changing the import:

    from orchestrator import OpenAICompatible, llm_chat, tool
"""

from orchestrator.llm import OpenAICompatible
from orchestrator.runtime.chat import llm_chat
from orchestrator.runtime.selfref import SelfReference
from orchestrator.runtime.tools import tool
from orchestrator.signals import ABORT_SIGNAL_PARAM, AbortSignal

__all__ = [
    "ABORT_SIGNAL_PARAM",
    "AbortSignal",
    "OpenAICompatible",
    "SelfReference",
    "llm_chat",
    "tool",
]
