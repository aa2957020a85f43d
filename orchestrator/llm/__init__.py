"""OpenAI-compatible chat models over httpx: provider config, key pools, rate limits, retries.

OpenAICompatible    one model at one base URL (implements `orchestrator.ports.LLMInterface`)
FallbackLLM         several models behind one interface; the next one takes over on failure
APIKeyPool          least-loaded key selection; a key answered 401/403 rests a while
RateLimiter         the one-method seam for request limits (TokenBucket in-process)
ModelConfig         one provider.json entry; `load_provider_file` validates a whole file
ChunkAccumulator    assembles chat.completion.chunk dicts into a message (from ports)
"""

from orchestrator.llm.config import DEFAULT_CONTEXT_WINDOW, ModelConfig, load_provider_file
from orchestrator.llm.fallback import FallbackLLM
from orchestrator.llm.key_pool import APIKeyPool, BenchedKey
from orchestrator.llm.openai_compatible import OpenAICompatible
from orchestrator.llm.rate_limit import RateLimiter, TokenBucket, Unlimited
from orchestrator.llm.retry import RetryPolicy, parse_retry_after
from orchestrator.llm.sse import SSEEvent, iter_sse_events
from orchestrator.llm.stream import StreamResumer
from orchestrator.ports import ChunkAccumulator

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "APIKeyPool",
    "BenchedKey",
    "ChunkAccumulator",
    "FallbackLLM",
    "ModelConfig",
    "OpenAICompatible",
    "RateLimiter",
    "RetryPolicy",
    "SSEEvent",
    "StreamResumer",
    "TokenBucket",
    "Unlimited",
    "iter_sse_events",
    "load_provider_file",
    "parse_retry_after",
]
