"""A fork's SelfReference memory on a worker's store (Redis, here fakeredis): its context
and its turn are written in one script call at the turn's end, and the record then holds
what it always held (the context's write at the start and the turn's save)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator import OpenAICompatible, SelfReference, llm_chat
from orchestrator.errors import LLMError
from orchestrator.keys import Keys
from orchestrator.ports import TranscriptBase
from orchestrator.runtime import AgentSpec, TurnState, agent_spec, run_turn
from orchestrator.runtime.selfref import render_compaction_summary
from orchestrator.runtime.state import TurnError
from orchestrator.store.memory import RedisMemoryStore

pytestmark = pytest.mark.timeout(20)

StartServer = Callable[..., Any]
KEY = "agent::fork::1"
SUMMARY = {
    "goal": "g",
    "instruction": "i",
    "discoveries": ["d"],
    "completed": [],
    "current_status": "s",
    "likely_next_work": [],
    "relevant_files_directories": [],
}
CONTEXT = [
    {"role": "system", "content": "You are a test agent."},
    {"role": "user", "content": "split the work"},
    {"role": "assistant", "content": render_compaction_summary(SUMMARY)},
]


class Counted:
    """A client that counts script calls (each one pipeline here) and whole-record reads."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.scripts = 0
        self.reads = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.scripts += 1
        return self._inner.pipeline(*args, **kwargs)

    async def hgetall(self, *args: Any) -> Any:
        self.reads += 1
        return await self._inner.hgetall(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
async def llm() -> AsyncIterator[Callable[[Any], OpenAICompatible]]:
    clients: list[OpenAICompatible] = []

    def make(server: Any) -> OpenAICompatible:
        client = OpenAICompatible(
            api_keys="scripted",
            model_name="scripted",
            base_url=server.base_url,
            retry_delay=0.01,
            max_retries=1,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def make_spec(llm: OpenAICompatible) -> AgentSpec:
    @llm_chat(llm_interface=llm, self_reference=SelfReference(), stream=False)
    async def agent(message: str, history: list[dict[str, Any]] | None = None) -> None:
        """You are a test agent."""

    return agent_spec(agent)


async def fork_turn(spec: AgentSpec, store: RedisMemoryStore, key: str = KEY) -> TurnState:
    """A fork's turn as a worker runs it: its state made, checkpointed (a JSON round
    trip, as a resumed fork reads it), then run to its end."""
    state = await spec.fork_state(
        CONTEXT,
        "do part one",
        fork_id="fork_1",
        depth=1,
        memory_key=key,
        session_id="s1",
        agent_call_id="root.fork_1",
        memory=store,
    )
    resumed = TurnState.model_validate_json(state.model_dump_json())
    async for _ in run_turn(spec, resumed, memory=store):
        pass
    return resumed


async def test_a_forks_memory_costs_one_script_call(
    fake_redis: Any, keys: Keys, mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    """A fork's start only reads its record; its context is written with its turn's
    save, in one script call (not one at the start and one at the end)."""
    parent = RedisMemoryStore(fake_redis, keys)
    await parent.add_experiences(KEY, ["inherited lesson"])  # as the parent's spawn does
    counted = Counted(fake_redis)
    store = RedisMemoryStore(counted, keys)  # type: ignore[arg-type]
    server = mock_llm({"model": "scripted", "rules": [], "fallback": {"content": "part done"}})
    spec = make_spec(llm(server))
    await fork_turn(spec, store, "agent::fork::2")  # loads the scripts into Redis
    counted.scripts = counted.reads = 0
    await fork_turn(spec, store)
    assert (counted.scripts, counted.reads) == (1, 1)
    # The model saw the inherited experience in its system prompt.
    system = server.requests()[-1]["body"]["messages"][0]["content"]
    assert "[exp_1] inherited lesson" in system


async def test_a_forks_record_after_its_turn_is_what_it_always_was(
    fake_redis: Any, keys: Keys, mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    """After the fork's turn its record holds the context and the turn (no injected
    blocks), at revision 2 (the context's write, then the turn's), the summary its
    context carries, and the experiences it inherited."""
    store = RedisMemoryStore(fake_redis, keys)
    await store.add_experiences(KEY, ["inherited lesson"])
    server = mock_llm({"model": "scripted", "rules": [], "fallback": {"content": "part done"}})
    state = await fork_turn(make_spec(llm(server)), store)
    record = await RedisMemoryStore(fake_redis, keys).load(KEY)
    assert record.messages[:3] == CONTEXT
    assert [m["role"] for m in record.messages[3:]] == ["user", "assistant"]
    assert record.messages[-1]["content"] == "part done"
    assert record.revision == 2
    assert record.summary == SUMMARY
    assert [e.text for e in record.experiences] == ["inherited lesson"]
    assert state.messages[-1]["content"] == "part done"


async def test_a_forks_stale_summary_goes_when_its_context_has_none(
    fake_redis: Any, keys: Keys, mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    """A fork key that held a summary (a tenant-wide key used before) keeps none once the
    fork's context, which carries none, is its memory."""
    store = RedisMemoryStore(fake_redis, keys)
    await store.set_summary(KEY, SUMMARY)
    server = mock_llm({"model": "scripted", "rules": [], "fallback": {"content": "part done"}})
    spec = make_spec(llm(server))
    state = await spec.fork_state(
        CONTEXT[:2],
        "do part one",
        fork_id="fork_1",
        depth=1,
        memory_key=KEY,
        session_id="s1",
        agent_call_id="root.fork_1",
        memory=store,
    )
    async for _ in run_turn(spec, state, memory=store):
        pass
    record = await store.load(KEY)
    assert record.summary is None
    assert record.messages[:2] == CONTEXT[:2]
    assert record.revision == 2


async def test_a_fork_whose_model_call_fails_keeps_its_context_in_memory(
    fake_redis: Any, keys: Keys, mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    """A fork that fails before its turn's save still leaves its context as its memory
    (what its start always wrote)."""
    store = RedisMemoryStore(fake_redis, keys)
    script = {
        "model": "scripted",
        "rules": [{"reply": {"content": "never"}, "fault": {"type": "http_400", "times": None}}],
    }
    with pytest.raises(LLMError):
        await fork_turn(make_spec(llm(mock_llm(script))), store)
    record = await store.load(KEY)
    assert record.messages == CONTEXT
    assert record.summary == SUMMARY


async def test_a_fork_key_written_during_the_turn_keeps_that_write(
    fake_redis: Any, keys: Keys
) -> None:
    """Someone writes the fork's key while its turn runs (before its context was
    written): the turn's save keeps that write and appends the turn's own messages
    (once, however often the save is retried), as `save_turn` does after any write."""
    store = RedisMemoryStore(fake_redis, keys)
    snapshot = await store.preview_history(KEY, CONTEXT, SUMMARY)
    assert (snapshot.revision, snapshot.messages, snapshot.summary) == (1, CONTEXT, SUMMARY)
    other = {"role": "user", "content": "written meanwhile"}
    await RedisMemoryStore(fake_redis, keys).save_messages(KEY, [other])
    own = [{"role": "user", "content": "do part one"}, {"role": "assistant", "content": "ok"}]
    base = TranscriptBase(revision=1, count=len(CONTEXT), writer="root.fork_1", unsaved=True)
    for _ in range(2):
        await store.save_started_turn(KEY, [*CONTEXT, *own], base, SUMMARY, unless_pending=False)
    record = await store.load(KEY)
    assert record.messages == [other, *own]
    assert record.revision == 2
    assert record.summary is None


async def test_a_failed_fork_resumed_from_its_last_checkpoint_keeps_its_context(
    fake_redis: Any, keys: Keys, mock_llm: StartServer, llm: Callable[[Any], OpenAICompatible]
) -> None:
    """A fork whose worker died after checkpointing its failure (before anything else
    was written) is resumed, fails again at once, and its memory holds its context."""
    store = RedisMemoryStore(fake_redis, keys)
    spec = make_spec(llm(mock_llm({"model": "scripted", "rules": []})))
    state = await spec.fork_state(
        CONTEXT,
        "do part one",
        fork_id="fork_1",
        depth=1,
        memory_key=KEY,
        session_id="s1",
        agent_call_id="root.fork_1",
        memory=store,
    )
    state.started, state.phase = True, "done"
    state.error = TurnError(type="LLMError", message="the model is down")
    resumed = TurnState.model_validate_json(state.model_dump_json())
    with pytest.raises(LLMError):
        async for _ in run_turn(spec, resumed, memory=store):
            pass
    assert (await store.load(KEY)).messages == CONTEXT
