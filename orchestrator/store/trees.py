"""Read-only views of one run's fork tree, for dashboards.

    TreeReader.records(root)          the root's and every fork's RunRecord, level by level
                                      (each parent's children list, then one MGET per level)
    TreeReader.scan(session, root)    one pass over the session stream that looks only at
                                      each entry's index fields (`kind`, `run`, `root`) and
                                      decodes only status entries: entries per agent, the
                                      first entry id of each, its waits in a gather, and
                                      the id of the last entry read
    TreeReader.lane(session, run)     one agent's own entries between two stream ids, decoded

A tree of 300 forks is about 11,000 stream entries; decoding every event to summarise it
costs seconds, reading the index fields a tenth of that. A tree is bounded: at most
`max_agents` agents are read (forks are bounded per agent and in depth by the settings).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from orchestrator.errors import PayloadError
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunStatus, StatusEntry, StreamEntry, fork_run_id
from orchestrator.store._codec import text
from orchestrator.store.connection import Redis, translate_errors
from orchestrator.store.runs import RunStore
from orchestrator.store.streams import (
    MULTI_WIRE_VERSION,
    decode_entry,
    decode_item,
    decode_run_items,
    item_count,
    item_id,
    split_item_id,
)

__all__ = ["AgentTrace", "LanePage", "TreeReader", "TreeScan", "stream_id_ms"]

log = structlog.get_logger(__name__)

# Raw entries per XRANGE page.
_PAGE = 2000
_MULTI = MULTI_WIRE_VERSION.encode()


def stream_id_ms(entry_id: str) -> int:
    """The millisecond timestamp of a stream id ("ms-seq"): when Redis appended it."""
    return int(entry_id.partition("-")[0])


@dataclass
class AgentTrace:
    """What one agent's stream entries say, without decoding its events.

    `entries`: the stream entries it wrote (one XADD each: its own, and a batch of its
    forks' "queued" statuses in one entry); `outputs`: its own outputs (events, responses,
    its statuses), which several to an entry (see `orchestrator.store.streams`)."""

    entries: int = 0
    outputs: int = 0
    first_id: str | None = None
    last_id: str | None = None
    # Status entries seen (status, at), in stream order.
    statuses: list[tuple[RunStatus, float]] = field(default_factory=list)
    # Intervals suspended in a gather: (from, until); until None while still waiting.
    waits: list[tuple[float, float | None]] = field(default_factory=list)

    def note(self, entry_id: str, status: StatusEntry | None, *, wrote: bool = True) -> None:
        """One of its outputs (`wrote`: in an entry of its own, counted as one)."""
        self.entries += wrote
        self.outputs += 1
        if self.first_id is None:
            self.first_id = entry_id
        self.last_id = entry_id
        if status is not None:
            self.statuses.append((status.status, status.at))
            if status.status is RunStatus.WAITING:
                self.waits.append((status.at, None))
            elif status.status.terminal:
                self._resume(status.at)
        elif self.waits and self.waits[-1][1] is None:
            # The agent's first entry after a wait: it was resumed (Redis's clock).
            self._resume(stream_id_ms(entry_id) / 1000.0)

    def _resume(self, at: float) -> None:
        if self.waits and self.waits[-1][1] is None:
            began = self.waits[-1][0]
            self.waits[-1] = (began, max(began, at))


@dataclass
class TreeScan:
    """One pass over a session stream for one run tree."""

    agents: dict[str, AgentTrace] = field(default_factory=dict)
    # The last entry read (of any run in the session): tail the stream after it.
    last_id: str | None = None

    @property
    def entries(self) -> int:
        return sum(a.entries for a in self.agents.values())

    @property
    def outputs(self) -> int:
        return sum(a.outputs for a in self.agents.values())


@dataclass(frozen=True)
class LanePage:
    entries: list[StreamEntry]
    # Resume after this id for the rest (None: the range is exhausted).
    next_after: str | None


def _field(fields: Mapping[Any, Any], name: bytes) -> Any:
    value = fields.get(name)
    return fields.get(name.decode()) if value is None else value


class _ScanPass:
    """The per-entry work of `TreeReader.scan`, kept to byte comparisons for the entries
    of other trees and the events (only status entries are decoded)."""

    def __init__(self, stream: str, root_run_id: str, max_agents: int) -> None:
        self._stream = stream
        self._root = root_run_id.encode()
        self._max_agents = max_agents
        self._by_raw: dict[Any, AgentTrace] = {}
        self._names: dict[Any, str] = {}
        self._last: Any = None

    def note(self, raw_id: Any, fields: Mapping[Any, Any]) -> None:
        self._last = raw_id
        if _field(fields, b"v") in (_MULTI, MULTI_WIRE_VERSION):
            self._note_items(raw_id, fields)
            return
        run = _field(fields, b"run")
        root = _field(fields, b"root")
        if (run if root is None else root) not in (self._root, self._root.decode()):
            return
        status = None
        if _field(fields, b"kind") in (b"status", "status"):
            try:
                status = decode_entry(text(raw_id), fields).status
            except PayloadError as exc:
                self._warn(raw_id, exc)
                return
        trace = self._by_raw.get(run) or self._new_trace(raw_id, run)
        if trace is not None:
            trace.note(text(raw_id), status)

    def _note_items(self, raw_id: Any, fields: Mapping[Any, Any]) -> None:
        """A v2 entry's items, each read as `note` reads a v1 entry; the entry counts
        once, for the agent that wrote it (`_writer`)."""
        entry_id = text(raw_id)
        try:
            named = {text(k): v for k, v in fields.items()}
            count = item_count(entry_id, named)
        except PayloadError as exc:
            self._warn(raw_id, exc)
            return
        mine: list[tuple[str, Any, StatusEntry | None]] = []
        for index in range(count):
            id_ = item_id(entry_id, index, count)
            run, root = named.get(f"r{index}"), named.get(f"o{index}")
            if run is None or (run if root is None else root) not in (
                self._root,
                self._root.decode(),
            ):
                continue
            status = None
            if named.get(f"k{index}") in (b"status", "status"):
                try:
                    kind, data = text(named[f"k{index}"]), named[f"d{index}"]
                    root_id = None if root is None else text(root)
                    status = decode_item(id_, kind, text(run), root_id, data).status
                except (PayloadError, KeyError) as exc:
                    self._warn(id_, PayloadError(str(exc)))
                    continue
            mine.append((id_, run, status))
        writer = _writer(mine)
        for id_, run, status in mine:
            trace = self._by_raw.get(run) or self._new_trace(id_, run)
            if trace is not None:
                trace.note(id_, status, wrote=False)
        trace = None if writer is None else self._by_raw.get(writer)
        if trace is None and writer is not None:
            trace = self._new_trace(entry_id, writer)
        if trace is not None:
            trace.entries += 1

    def _new_trace(self, raw_id: Any, run: Any) -> AgentTrace | None:
        if len(self._by_raw) >= self._max_agents:
            return None
        try:
            self._names[run] = text(run)
        except PayloadError as exc:
            self._warn(raw_id, exc)
            return None
        trace = self._by_raw[run] = AgentTrace()
        return trace

    def _warn(self, raw_id: Any, exc: PayloadError) -> None:
        log.warning("stream.malformed_entry", stream=self._stream, entry_id=raw_id, error=str(exc))

    def result(self) -> TreeScan:
        return TreeScan(
            agents={self._names[raw]: trace for raw, trace in self._by_raw.items()},
            last_id=None if self._last is None else text(self._last),
        )


class TreeReader:
    """Reads one run tree's records and stream; never writes."""

    def __init__(self, redis: Redis, keys: Keys, *, max_agents: int = 10_000) -> None:
        self._redis = redis
        self._keys = keys
        self._runs = RunStore(redis, keys)
        self.max_agents = max_agents

    async def records(self, root: RunRecord) -> builtins.list[RunRecord]:
        """The root's record and every fork's below it, parents before their forks, each
        parent's forks in spawn order. Forks whose record is gone are left out."""
        found = [root]
        level = [root]
        while level and len(found) < self.max_agents:
            children = await self._children(root.session_id, [r.run_id for r in level])
            run_ids = [fork_run_id(root.run_id, f) for f in children]
            run_ids = run_ids[: self.max_agents - len(found)]
            loaded = await self._runs.get_many(run_ids)
            level = [loaded[r] for r in run_ids if r in loaded]
            found.extend(level)
        return found

    async def _children(self, session_id: str, call_ids: builtins.list[str]) -> builtins.list[str]:
        async with (
            translate_errors("fork tree"),
            self._redis.pipeline(transaction=False) as pipe,
        ):
            for call_id in call_ids:
                pipe.lrange(self._keys.children(session_id, call_id), 0, -1)
            replies = await pipe.execute()
        return [text(fork_id) for reply in replies for fork_id in reply]

    async def scan(self, session_id: str, root_run_id: str) -> TreeScan:
        """Every entry of the run tree in the session stream, counted per agent."""
        stream = self._keys.events(session_id)
        pass_ = _ScanPass(stream, root_run_id, self.max_agents)
        start = "-"
        while True:
            async with translate_errors("stream scan"):
                page = await self._redis.xrange(stream, min=start, max="+", count=_PAGE)
            for raw_id, fields in page:
                pass_.note(raw_id, fields)
            if len(page) < _PAGE:
                return pass_.result()
            start = "(" + text(page[-1][0])

    async def lane(
        self,
        session_id: str,
        run_id: str,
        *,
        after: str | None = None,
        upto: str | None = None,
        limit: int = 5000,
    ) -> LanePage:
        """Up to `limit` of one agent's own entries (not its forks'), after `after` and
        up to `upto` (inclusive), decoded; malformed ones are skipped with a warning.
        Both may be item ids ("<ms>-<seq>.<i>", see `orchestrator.store.streams`)."""
        stream = self._keys.events(session_id)
        after_entry, after_item = (None, None) if after is None else split_item_id(after)
        upto_entry, upto_item = (None, None) if upto is None else split_item_id(upto)
        # An item id's entry is read again (inclusive), and its items up to it skipped.
        if after_entry is None:
            start = "-"
        elif after_item is None:
            start = "(" + after_entry
        else:
            start = after_entry
        end = "+" if upto_entry is None else upto_entry
        entries: builtins.list[StreamEntry] = []
        while True:
            async with translate_errors("lane read"):
                page = await self._redis.xrange(stream, min=start, max=end, count=_PAGE)
            for raw_id, fields in page:
                entry_id = text(raw_id)
                start = "(" + entry_id
                first = after_item + 1 if entry_id == after_entry and after_item is not None else 0
                last = upto_item if entry_id == upto_entry else None
                for id_, entry in _lane_items(stream, entry_id, fields, run_id, first, last):
                    entries.append(entry)
                    if len(entries) >= limit:
                        return LanePage(entries, next_after=id_)
            if len(page) < _PAGE:
                return LanePage(entries, next_after=None)


def _writer(items: builtins.list[tuple[str, Any, StatusEntry | None]]) -> Any:
    """The (raw) run id of the agent that wrote an entry's items: their run, or for a batch
    of forks' statuses (several runs) the forks' parent."""
    if not items:
        return None
    runs = {run for _, run, _ in items}
    first = items[0]
    if len(runs) == 1:
        return first[1]
    fork = first[2].fork if first[2] is not None else None
    if fork is None:
        return first[1]
    return fork.parent_run_id.encode() if isinstance(first[1], bytes) else fork.parent_run_id


def _lane_items(
    stream: str,
    entry_id: str,
    fields: Mapping[Any, Any],
    run_id: str,
    first: int,
    last: int | None,
) -> builtins.list[tuple[str, StreamEntry]]:
    """The run's own items of a raw entry from index `first` up to `last` (None: all),
    decoded; malformed ones are skipped with a warning."""
    if _field(fields, b"v") not in (_MULTI, MULTI_WIRE_VERSION):
        run = _field(fields, b"run")
        if (run != run_id.encode() and run != run_id) or first > 0:
            return []
        try:
            return [(entry_id, decode_entry(entry_id, fields))]
        except PayloadError as exc:
            log.warning("stream.malformed_entry", stream=stream, entry_id=entry_id, error=str(exc))
            return []
    try:
        items = decode_run_items(entry_id, fields, run_id, first, last)
    except PayloadError as exc:
        log.warning("stream.malformed_entry", stream=stream, entry_id=entry_id, error=str(exc))
        return []
    found: builtins.list[tuple[str, StreamEntry]] = []
    for id_, item in items:
        if isinstance(item, PayloadError):
            log.warning("stream.malformed_entry", stream=stream, entry_id=id_, error=str(item))
        else:
            found.append((id_, item))
    return found
