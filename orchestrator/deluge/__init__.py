"""lm-deluge's client, on this project's models and cluster (docs/deluge.md).

    from orchestrator.deluge import LLMClient, Conversation, Message, Tool

    client = LLMClient(["claude-4-sonnet", "gpt-4.1"], model_weights=[0.7, 0.3])
    conv = Conversation().system("You are a helpful assistant.").user("Hi!")
    response = await client.start(conv, prefer_model="last")
    conv = conv.with_response(response)

Conversation, Message     prompts; to/from the OpenAI message list (`to_openai`)
LLMClient                 start / process_prompts_async / run_agent_loop, limits, fallback
APIResponse, Usage        one answer: completion, model_internal, usage, cost, error
Tool                      Tool.from_function(func): a plain function the model may call
register_model, ModelSpec, ModelRegistry     models by name, with prices per million tokens
RequestLimiter, SlidingWindow                the rate-limit seam and its in-process form
"""

from orchestrator.deluge.client import LLMClient
from orchestrator.deluge.conversation import (
    Conversation,
    Message,
    Text,
    ToolCall,
    ToolResult,
    as_conversation,
)
from orchestrator.deluge.limits import RequestLimiter, SlidingWindow
from orchestrator.deluge.models import (
    BUILTIN_MODELS,
    ModelRegistry,
    ModelSpec,
    default_registry,
    register_model,
)
from orchestrator.deluge.response import APIResponse, Usage, total_cost, total_usage
from orchestrator.deluge.tool import Tool

__all__ = [
    "BUILTIN_MODELS",
    "APIResponse",
    "Conversation",
    "LLMClient",
    "Message",
    "ModelRegistry",
    "ModelSpec",
    "RequestLimiter",
    "SlidingWindow",
    "Text",
    "Tool",
    "ToolCall",
    "ToolResult",
    "Usage",
    "as_conversation",
    "default_registry",
    "register_model",
    "total_cost",
    "total_usage",
]
