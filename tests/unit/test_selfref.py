"""SelfReference: history replace vs reuse, experiences, compaction, model-facing tools."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.errors import AgentError, ToolError
from orchestrator.ports import MemoryStore
from orchestrator.runtime.memory import InMemoryMemoryStore
from orchestrator.runtime.selfref import (
    FORKS_UNAVAILABLE,
    SelfRefContext,
    SelfReference,
    apply_system_addendum,
    make_tool_runtime,
    parse_compaction_summary,
    render_compaction_summary,
    strip_injected_blocks,
)
from orchestrator.runtime.tools import Tool, format_tool_result, tool, toolkit_by_name

SUMMARY_ARGS: dict[str, Any] = {
    "goal": "Plan the trip",
    "instruction": "Keep it cheap",
    "discoveries": ["Trains are cheaper than planes"],
    "completed": ["Picked dates"],
    "current_status": "Comparing hotels",
    "likely_next_work": ["Book the hotel"],
    "relevant_files_directories": ["notes/trip.md"],
}

TURN = [
    {"role": "system", "content": "You are a travel agent."},
    {"role": "user", "content": "Plan my trip"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "selfref_context_compact", "arguments": "{}"},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "queued"},
]


@pytest.fixture
def ctx() -> SelfRefContext:
    return SelfReference().bind("agent")


# -- binding and history -----------------------------------------------------------------


def test_self_reference_defaults_to_its_own_in_memory_store() -> None:
    """Each SelfReference() gets a fresh store and a distinct instance id."""
    first, second = SelfReference(), SelfReference()
    assert isinstance(first.store, InMemoryMemoryStore)
    assert first.store is not second.store
    assert len(first.instance_id) == 32
    assert first.instance_id != second.instance_id


async def test_bind_can_override_the_store() -> None:
    """A worker binds a turn to its own store; the instance's store is untouched."""
    self_reference = SelfReference()
    worker_store = InMemoryMemoryStore()
    ctx = self_reference.bind("agent", store=worker_store)
    await ctx.remember("lives on the worker")
    assert len((await worker_store.load("agent")).experiences) == 1
    assert (await self_reference.store.load("agent")).experiences == []


def test_bind_rejects_an_empty_key() -> None:
    """A memory key is required."""
    with pytest.raises(AgentError):
        SelfReference().bind("  ")


async def test_passing_history_replaces_stored_memory(ctx: SelfRefContext) -> None:
    """history=[...] replaces the key's memory (SimpleLLMFunc semantics)."""
    await ctx.save_messages([{"role": "user", "content": "old"}])
    history = [{"role": "user", "content": "new"}]
    assert await ctx.resolve_history(history) == history
    assert await ctx.load_messages() == history


async def test_passing_no_history_reuses_stored_memory(ctx: SelfRefContext) -> None:
    """history=None continues from what the key remembers."""
    await ctx.save_messages([{"role": "user", "content": "remembered"}])
    assert await ctx.resolve_history(None) == [{"role": "user", "content": "remembered"}]


async def test_empty_history_clears_messages_but_keeps_experiences(ctx: SelfRefContext) -> None:
    """Experiences are durable: replacing the transcript does not forget them."""
    await ctx.save_messages([{"role": "user", "content": "old"}])
    await ctx.remember("user prefers trains")
    assert await ctx.resolve_history([]) == []
    snapshot = await ctx.inspect()
    assert snapshot["messages"] == []
    assert [e["text"] for e in snapshot["experiences"]] == ["user prefers trains"]


async def test_saved_messages_drop_injected_blocks_and_transient_fields(
    ctx: SelfRefContext,
) -> None:
    """Memory keeps the base system prompt; the addendum is re-rendered each turn."""
    await ctx.remember("be brief")
    system = apply_system_addendum(TURN[:2], await ctx.system_addendum())[0]
    assert "<experience>" in system["content"]
    await ctx.save_messages(
        [system, {"role": "assistant", "content": "hi", "reasoning_details": [{"x": 1}]}]
    )
    assert await ctx.load_messages() == [
        {"role": "system", "content": "You are a travel agent."},
        {"role": "assistant", "content": "hi"},
    ]


async def test_keys_are_isolated() -> None:
    """Two keys on one SelfReference do not see each other's memory."""
    self_reference = SelfReference()
    a, b = self_reference.bind("a"), self_reference.bind("b")
    await a.remember("only a")
    await a.save_messages([{"role": "user", "content": "for a"}])
    assert (await b.inspect())["experiences"] == []
    assert await b.load_messages() == []


# -- remember / forget / inspect -----------------------------------------------------------


async def test_remember_returns_id_and_normalized_text(ctx: SelfRefContext) -> None:
    """Experiences get exp_N ids; whitespace is normalized; duplicates are not re-added."""
    first = await ctx.remember("  prefer   trains ")
    assert first == {"id": "exp_1", "text": "prefer trains"}
    assert await ctx.remember("prefer trains") == first
    assert (await ctx.remember("window seat"))["id"] == "exp_2"


async def test_remember_rejects_empty_text(ctx: SelfRefContext) -> None:
    """An empty experience is a ToolError the model can read."""
    with pytest.raises(ToolError, match="non-empty"):
        await ctx.remember("   ")


async def test_forget_removes_by_id_and_reports_misses(ctx: SelfRefContext) -> None:
    """forget returns whether something was removed."""
    exp = await ctx.remember("stale fact")
    assert await ctx.forget(exp["id"]) == {"experience_id": "exp_1", "removed": True}
    assert await ctx.forget("exp_1") == {"experience_id": "exp_1", "removed": False}
    assert (await ctx.inspect())["experiences"] == []


async def test_inspect_returns_the_documented_shape(ctx: SelfRefContext) -> None:
    """inspect() has active_key, experiences, summary, messages, has_pending_compaction."""
    await ctx.save_messages([{"role": "user", "content": "hi"}])
    await ctx.remember("a lesson")
    snapshot = await ctx.inspect()
    assert snapshot == {
        "active_key": "agent",
        "experiences": [{"id": "exp_1", "text": "a lesson"}],
        "summary": None,
        "messages": [{"role": "user", "content": "hi"}],
        "has_pending_compaction": False,
    }


async def test_inspect_messages_are_read_only_copies(ctx: SelfRefContext) -> None:
    """Changing what inspect returned does not change memory."""
    await ctx.save_messages([{"role": "user", "content": "hi"}])
    snapshot = await ctx.inspect()
    snapshot["messages"][0]["content"] = "tampered"
    snapshot["messages"].append({"role": "user", "content": "extra"})
    assert await ctx.load_messages() == [{"role": "user", "content": "hi"}]


async def test_key_argument_reaches_another_record() -> None:
    """Passing key= reads or writes another memory key than the active one."""
    self_reference = SelfReference()
    ctx = self_reference.bind("parent")
    await ctx.remember("child lesson", key="child")
    child = await ctx.inspect(key="child")
    assert child["active_key"] == "child"
    assert [e["text"] for e in child["experiences"]] == ["child lesson"]
    assert (await ctx.inspect())["experiences"] == []


# -- compaction ------------------------------------------------------------------------


async def test_compact_only_queues(ctx: SelfRefContext) -> None:
    """compact() stores a pending compaction and changes nothing else yet."""
    await ctx.save_messages(TURN)
    result = await ctx.compact(**SUMMARY_ARGS, remember=["Prefer trains"])
    assert result["status"] == "queued"
    assert result["active_key"] == "agent"
    assert result["remember"] == ["Prefer trains"]
    assert result["assistant_message"].startswith("<context_compaction_summary>")
    snapshot = await ctx.inspect()
    assert snapshot["has_pending_compaction"] is True
    assert snapshot["summary"] is None
    assert snapshot["experiences"] == []
    assert snapshot["messages"] == TURN


async def test_compact_validates_required_sections(ctx: SelfRefContext) -> None:
    """Empty text sections are rejected with the section's name."""
    with pytest.raises(ToolError, match="goal"):
        await ctx.compact(**{**SUMMARY_ARGS, "goal": " "})


async def test_apply_pending_compaction_commits(ctx: SelfRefContext) -> None:
    """The commit keeps the system prompt, adds one summary message, stores the summary,
    turns `remember` into experiences and clears the queue."""
    await ctx.save_messages(TURN)
    await ctx.compact(**SUMMARY_ARGS, remember=["Prefer trains"])

    compacted = await ctx.apply_pending_compaction(TURN)

    assert compacted is not None
    assert [m["role"] for m in compacted] == ["system", "assistant"]
    assert compacted[0]["content"] == (
        "You are a travel agent.\n\n<experience>\n- [exp_1] Prefer trains\n</experience>"
    )
    assert parse_compaction_summary(compacted[1]["content"]) == SUMMARY_ARGS
    snapshot = await ctx.inspect()
    assert snapshot["summary"] == SUMMARY_ARGS
    assert snapshot["has_pending_compaction"] is False
    assert [e["text"] for e in snapshot["experiences"]] == ["Prefer trains"]
    assert snapshot["messages"] == [
        {"role": "system", "content": "You are a travel agent."},
        compacted[1],
    ]


async def test_apply_without_pending_compaction_returns_none(ctx: SelfRefContext) -> None:
    """Nothing queued: the loop keeps its transcript."""
    assert await ctx.apply_pending_compaction(TURN) is None


async def test_compaction_commits_once(ctx: SelfRefContext) -> None:
    """After a commit the queue is empty, so a second apply is a no-op."""
    await ctx.compact(**SUMMARY_ARGS)
    assert await ctx.apply_pending_compaction(TURN) is not None
    assert await ctx.apply_pending_compaction(TURN) is None


def test_summary_rendering_matches_simplellmfunc() -> None:
    """Sections, titles and tags as SimpleLLMFunc renders them; parsing round-trips."""
    rendered = render_compaction_summary(SUMMARY_ARGS)
    assert rendered.splitlines() == [
        "<context_compaction_summary>",
        "## Goal",
        "Plan the trip",
        "",
        "## Instruction",
        "Keep it cheap",
        "",
        "## Discoveries",
        "- Trains are cheaper than planes",
        "",
        "## Completed",
        "- Picked dates",
        "",
        "## Current Status",
        "Comparing hotels",
        "",
        "## Likely next work",
        "- Book the hotel",
        "",
        "## Relevant files/directories",
        "- notes/trip.md",
        "</context_compaction_summary>",
    ]
    assert parse_compaction_summary(rendered) == SUMMARY_ARGS
    assert parse_compaction_summary("just text") is None


# -- the system prompt addendum ----------------------------------------------------------


async def test_system_addendum_is_empty_when_nothing_is_stored(ctx: SelfRefContext) -> None:
    """No experiences and no summary: nothing to add."""
    assert await ctx.system_addendum() == ""


async def test_system_addendum_lists_experiences(ctx: SelfRefContext) -> None:
    """Experiences appear in SimpleLLMFunc's <experience> block with their ids."""
    await ctx.remember("prefer trains")
    await ctx.remember("window seat")
    assert await ctx.system_addendum() == (
        "<experience>\n- [exp_1] prefer trains\n- [exp_2] window seat\n</experience>"
    )


async def test_system_addendum_adds_summary_only_if_transcript_lacks_it(
    ctx: SelfRefContext,
) -> None:
    """After a commit the transcript carries the summary, so the addendum does not repeat
    it; a transcript without it gets the summary in the addendum."""
    await ctx.compact(**SUMMARY_ARGS)
    compacted = await ctx.apply_pending_compaction(TURN)
    assert compacted is not None
    assert "<context_compaction_summary>" not in await ctx.system_addendum()
    lacking = await ctx.system_addendum([{"role": "user", "content": "hi"}])
    assert parse_compaction_summary(lacking) == SUMMARY_ARGS


async def test_replaced_history_without_summary_clears_it(ctx: SelfRefContext) -> None:
    """The stored summary follows the transcript: a fresh history drops a stale summary."""
    await ctx.compact(**SUMMARY_ARGS)
    compacted = await ctx.apply_pending_compaction(TURN)
    assert compacted is not None
    await ctx.resolve_history(compacted)
    assert (await ctx.inspect())["summary"] == SUMMARY_ARGS
    await ctx.resolve_history([])
    assert (await ctx.inspect())["summary"] is None


def test_apply_system_addendum_is_idempotent() -> None:
    """Re-applying replaces the earlier blocks instead of stacking them."""
    addendum = "<experience>\n- [exp_1] x\n</experience>"
    once = apply_system_addendum(TURN, addendum)
    twice = apply_system_addendum(once, addendum)
    assert once == twice
    assert strip_injected_blocks(once[0]["content"]) == "You are a travel agent."
    assert TURN[0]["content"] == "You are a travel agent."
    assert apply_system_addendum([], addendum) == [{"role": "system", "content": addendum}]
    assert apply_system_addendum([], "") == []


# -- tools for the model -----------------------------------------------------------------


def test_tools_have_simplellmfunc_primitive_names(ctx: SelfRefContext) -> None:
    """The model sees selfref_context_* and selfref_guide, and they index cleanly."""
    tools = ctx.tools()
    assert [t.name for t in tools] == [
        "selfref_context_inspect",
        "selfref_context_remember",
        "selfref_context_forget",
        "selfref_context_compact",
        "selfref_guide",
    ]
    assert set(toolkit_by_name(tools)) == {t.name for t in tools}


def test_tool_schemas(ctx: SelfRefContext) -> None:
    """Each tool's parameters match the primitive's signature."""
    schemas = {t.name: t.definition()["function"]["parameters"] for t in ctx.tools()}
    assert set(schemas["selfref_context_inspect"]["properties"]) == {"key"}
    assert "required" not in schemas["selfref_context_inspect"]
    assert schemas["selfref_context_remember"]["required"] == ["text"]
    assert schemas["selfref_context_forget"]["required"] == ["experience_id"]
    compact = schemas["selfref_context_compact"]
    assert compact["required"] == [
        "goal",
        "instruction",
        "discoveries",
        "completed",
        "current_status",
        "likely_next_work",
        "relevant_files_directories",
    ]
    assert compact["properties"]["discoveries"] == {
        "type": "array",
        "items": {"type": "string"},
        "description": "Summary Discoveries bullets.",
    }
    assert schemas["selfref_guide"]["properties"] == {}


async def test_calling_the_tools_changes_memory(ctx: SelfRefContext) -> None:
    """remember/forget/compact through the tools act on the bound key's memory."""
    tools = toolkit_by_name(ctx.tools())
    exp = await tools["selfref_context_remember"].invoke({"text": "use metric"})
    assert exp == {"id": "exp_1", "text": "use metric"}
    inspected = await tools["selfref_context_inspect"].invoke({})
    assert inspected["experiences"] == [exp]
    assert await tools["selfref_context_forget"].invoke({"experience_id": "exp_1"}) == {
        "experience_id": "exp_1",
        "removed": True,
    }
    queued = await tools["selfref_context_compact"].invoke(SUMMARY_ARGS)
    assert queued["status"] == "queued"
    assert (await ctx.inspect())["has_pending_compaction"] is True
    assert format_tool_result(inspected).startswith("{")


async def test_compact_tool_reports_bad_arguments_as_tool_errors(ctx: SelfRefContext) -> None:
    """A missing section is reported to the model, not raised as a crash."""
    compact = toolkit_by_name(ctx.tools())["selfref_context_compact"]
    with pytest.raises(ToolError, match="argument 'goal' is required"):
        await compact.invoke({k: v for k, v in SUMMARY_ARGS.items() if k != "goal"})


async def test_guide_is_text_and_honest_about_forks(ctx: SelfRefContext) -> None:
    """In-process the guide gives the overview and says forks are not available here."""
    guide = toolkit_by_name(ctx.tools())["selfref_guide"]
    text = await guide.invoke({})
    assert text == ctx.guide()
    assert "selfref_context_compact" in text
    assert "not available here" in text


async def test_tool_providers_extend_the_tool_list() -> None:
    """Later tools (forks) plug in as providers without touching the context tools."""

    class ExtraTools:
        def tools(self, context: SelfRefContext) -> list[Tool]:
            @tool
            async def selfref_extra() -> str:
                """Extra."""
                return context.active_key

            return [selfref_extra]

        def guide_lines(self) -> list[str]:
            return ["Extra tools exist."]

    self_reference = SelfReference()
    self_reference.add_tool_provider(ExtraTools())
    ctx = self_reference.bind("agent")
    assert [t.name for t in ctx.tools()][-1] == "selfref_extra"
    assert "Extra tools exist." in ctx.guide()


# -- runtime.selfref ---------------------------------------------------------------------


async def test_runtime_exposes_context_guide_and_fork(ctx: SelfRefContext) -> None:
    """runtime.selfref.context is the bound context; guide() is the same text."""
    runtime = make_tool_runtime(ctx)
    assert runtime.has_selfref
    assert runtime.selfref.context is ctx
    assert runtime.selfref.guide() == ctx.guide()
    assert runtime.selfref.instance_id == ctx.instance_id
    await runtime.selfref.context.remember("via runtime")
    assert (await ctx.inspect())["experiences"][0]["text"] == "via runtime"


async def test_forks_say_they_are_not_available(ctx: SelfRefContext) -> None:
    """On a context bound without a fork backend, fork.spawn / gather_all raise an
    AgentError that says so plainly."""
    runtime = make_tool_runtime(ctx)
    with pytest.raises(AgentError, match="need a fork backend") as caught:
        await runtime.selfref.fork.spawn("sub task")
    assert str(caught.value) == FORKS_UNAVAILABLE
    with pytest.raises(AgentError, match="need a fork backend"):
        await runtime.selfref.fork.gather_all()


def test_runtime_without_selfref_explains_itself() -> None:
    """An agent without SelfReference gets a clear AgentError from runtime.selfref."""
    runtime = make_tool_runtime(None)
    assert not runtime.has_selfref
    with pytest.raises(AgentError, match="self_reference=SelfReference"):
        _ = runtime.selfref


def test_works_with_any_memory_store() -> None:
    """SelfReference is written against the MemoryStore Protocol."""
    store: MemoryStore = InMemoryMemoryStore()
    assert SelfReference(store).store is store
