"""The small interfaces the runtime and the adapters share. Nothing here imports redis,
arq or httpx.

    LLMInterface      a chat-completions model (OpenAICompatible over httpx implements it),
                      and ChunkAccumulator, the one assembler of what it returns
    MemoryStore       SelfReference memory per key (in-process dict, or Redis), with the
                      values it trades in: MemorySnapshot, TranscriptBase, MemoryLimits;
                      HistoryMemoryStore also replaces a history in one step
    Checkpointer      where a turn's state is saved between steps (nothing, or Redis);
                      DeferringCheckpointer also queues one without waiting for it;
                      EndingCheckpointer also holds a turn's last outputs for its end
    ForkBackend       starts forks and collects their results (Redis and arq on a worker),
                      asked with a SpawnRequest
    ForkLimits        depth and fan-out bounds of in-process forks
    ForkPrimitives    `runtime.selfref.fork` as tool code sees it (spawn, gather_all)
    SelfRefPrimitives `runtime.selfref` as tool code sees it (context, fork, guide)
    SessionJournal    bounded records a tool keeps per session across turns and workers
                      (JournalHead, JournalRecord, JournalLimits); ToolSession carries it

Each lives in a module of this package (llm, memory, selfref, journal); import them from
here.

Events are not a port of their own: a turn is an async generator of outputs, and
whoever drives it (llm_chat in-process, a worker) decides where they go.
"""

from orchestrator.ports.journal import (
    JournalHead,
    JournalLimits,
    JournalRecord,
    SessionJournal,
    ToolSession,
)
from orchestrator.ports.llm import ChunkAccumulator, LLMInterface
from orchestrator.ports.memory import (
    Checkpointer,
    DeferringCheckpointer,
    EndingCheckpointer,
    Experience,
    HistoryMemoryStore,
    MemoryLimits,
    MemorySnapshot,
    MemoryStore,
    TranscriptBase,
)
from orchestrator.ports.selfref import (
    ForkBackend,
    ForkLimits,
    ForkPrimitives,
    SelfRefPrimitives,
    SpawnRequest,
)

__all__ = [
    "Checkpointer",
    "ChunkAccumulator",
    "DeferringCheckpointer",
    "EndingCheckpointer",
    "Experience",
    "ForkBackend",
    "ForkLimits",
    "ForkPrimitives",
    "HistoryMemoryStore",
    "JournalHead",
    "JournalLimits",
    "JournalRecord",
    "LLMInterface",
    "MemoryLimits",
    "MemorySnapshot",
    "MemoryStore",
    "SelfRefPrimitives",
    "SessionJournal",
    "SpawnRequest",
    "ToolSession",
    "TranscriptBase",
]
