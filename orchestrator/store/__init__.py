"""Redis adapters: the only package (besides the worker) that imports redis.

connection    connect(), translate_errors(), optimistic transactions
streams       EventPublisher (batched, exactly-once) and StreamReader (resumable tail)
abort         AbortFlags (per run tree and per session) and AbortWatcher (key -> AbortSignal)
memory        RedisMemoryStore (orchestrator.ports.MemoryStore) in a MemoryScope
sessions      SessionTable: who owns a session (O(1)) and which runs it holds
checkpoints   CheckpointStore (fenced by run attempt)
runs          RunStore, LeaseTable, WorkerRegistry
trees         TreeReader: a run tree's records, a scan of its stream, one agent's lane
throughput    RecentEnds: the runs that ended lately, from the run indexes
"""

from orchestrator.store.abort import AbortFlags, AbortWatcher
from orchestrator.store.checkpoints import CheckpointStore
from orchestrator.store.connection import connect, translate_errors
from orchestrator.store.memory import MemoryScope, RedisMemoryStore
from orchestrator.store.runs import LeaseTable, RunStore, WorkerRegistry
from orchestrator.store.sessions import SessionOwner, SessionTable
from orchestrator.store.streams import EventPublisher, PublisherStats, StreamPage, StreamReader

__all__ = [
    "AbortFlags",
    "AbortWatcher",
    "CheckpointStore",
    "EventPublisher",
    "LeaseTable",
    "MemoryScope",
    "PublisherStats",
    "RedisMemoryStore",
    "RunStore",
    "SessionOwner",
    "SessionTable",
    "StreamPage",
    "StreamReader",
    "WorkerRegistry",
    "connect",
    "translate_errors",
]
