"""A SimpleLLMFunc program: a support chat agent watched through its event stream.

Uses: llm_chat with enable_event, a tool that emits custom events, with_event_observer,
history across turns, typed event attributes (usage), EventOrigin, abort.
"""

import asyncio
from typing import Any, Dict, List, Optional

from SimpleLLMFunc import OpenAICompatible, llm_chat, tool
from SimpleLLMFunc.hooks import (
    ABORT_SIGNAL_PARAM,
    AbortSignal,
    CustomEvent,
    EventOrigin,
    LLMCallEndEvent,
    LLMChunkArriveEvent,
    ReActEvent,
    ReactEndEvent,
    ToolCallEndEvent,
    ToolEventEmitter,
    is_event_yield,
    is_response_yield,
    with_event_observer,
)

llm = OpenAICompatible.load_from_json_file("provider.json")["scripted"]["scripted"]
usage_log: List[int] = []


def log_usage(event: ReActEvent, origin: EventOrigin) -> None:
    if isinstance(event, LLMCallEndEvent) and event.usage is not None:
        usage_log.append(event.usage.total_tokens)


@tool(name="search_docs", description="Search the product documentation")
async def search_docs(query: str, event_emitter: Optional[ToolEventEmitter] = None) -> str:
    if event_emitter:
        await event_emitter.emit("progress", {"stage": "searching", "query": query})
    return f"3 results for {query}"


@with_event_observer(log_usage)
@llm_chat(llm_interface=llm, toolkit=[search_docs], stream=True, enable_event=True)
async def support_agent(message: str, history: Optional[List[Dict[str, Any]]] = None):
    """You are a support agent. Search the docs before answering."""
    pass


async def main():
    history: List[Dict[str, Any]] = []
    for question in ["How do I export data?", "Thanks!"]:
        text = ""
        async for output in support_agent(question, history):
            if is_event_yield(output):
                event = output.event
                if isinstance(event, LLMChunkArriveEvent):
                    text = event.accumulated_content
                elif isinstance(event, CustomEvent):
                    print(f"progress: {event.data['stage']} ({event.tool_name})")
                elif isinstance(event, ToolCallEndEvent):
                    print(f"tool {event.tool_name}: {event.result}")
                elif isinstance(event, ReactEndEvent) and output.origin.fork_id is None:
                    usage = event.total_token_usage
                    print(f"tokens used: {usage.prompt_tokens > 0 and usage.completion_tokens > 0}")
            elif is_response_yield(output):
                history = output.messages
        print("answer:", text)
    print("history roles:", " ".join(m["role"] for m in history))

    signal = AbortSignal()
    async for output in support_agent(
        "Tell me a long story", history, **{ABORT_SIGNAL_PARAM: signal}
    ):
        if is_event_yield(output) and isinstance(output.event, LLMChunkArriveEvent):
            signal.abort("user_interrupt")
        if is_event_yield(output) and isinstance(output.event, ReactEndEvent):
            print("aborted:", output.event.extra.get("aborted"))
    print("llm calls with usage:", len(usage_log))


if __name__ == "__main__":
    asyncio.run(main())
