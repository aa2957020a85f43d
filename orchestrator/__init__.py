"""orchestrator: SimpleLLMFunc-style agents, run as arq jobs with events on Redis streams."""

from orchestrator.signals import ABORT_SIGNAL_PARAM, AbortSignal

__all__ = ["ABORT_SIGNAL_PARAM", "AbortSignal"]
