"""Session event streams: `EventPublisher` (worker side) and `StreamReader` (client side).

One Redis stream per session holds every output of every run in it, in order. An entry
holds one output or several:

- v1, one output: `v` ("1"), `kind` ("event", "response" or "status"), `run` (run id)
  and `data` (the output's JSON, or a `StatusEntry`'s JSON), plus `root` (the root run
  of the fork tree) on the entries of fork runs.
- v2, n outputs (2 to `MAX_ITEMS_PER_ENTRY`) written by one XADD: `v` ("2"), `n`, and
  for each item i (0-based) `k<i>` (kind), `r<i>` (run), `d<i>` (data) and, for a fork's
  item, `o<i>` (its root): the items of one entry may be of different runs (a batch of
  forks' "queued" statuses). Each item's data is decoded as a v1 entry's is.

A publisher's batch, a run's end (its last batch and its terminal status) and a batch of
forks' statuses are one entry each when the writer allows several items per entry
(`items_per_entry`, `Settings.stream_items_per_entry`); readers read both versions.

Ids: every output a reader yields has its own id, usable as a cursor (`after=`, an API's
`Last-Event-ID`). The output of a v1 entry, and the last item of a v2 entry, has the plain
entry id ("<ms>-<seq>"); item i of the others is "<ms>-<seq>.<i>". So ids order as
(ms, seq, i) with the plain id last in its entry, and resuming after a plain id resumes
after the whole entry (as older readers did). Resuming after "<ms>-<seq>.<i>" reads that
entry again and skips its items up to i. Stream lengths (XLEN, MAXLEN trimming, a read's
`count`) count entries, not outputs.

Publishing never waits for Redis: `publish()` appends to a buffer and a background task
sends whatever has accumulated in one script call (`_PUBLISH_LUA`: atomic, one round
trip, one command). While a send is in flight new outputs pile up for the next one, so an
idle publisher adds no latency and a busy one batches by itself. Each batch also records
its number under the publisher's id in the same script (in the seqs hash, with the
batch's event_seqs), so a batch retried after a
dropped connection is never written twice. A turn's checkpoint rides in the batch that
carries the events before it (`save_checkpoint`): events and the state that follows them
are written together, never a checkpoint ahead of its events. A run's last batch
(`take_last`) is written by the run's end, in its script (`LastBatch`, `RunStore.end`):
checked, marked and numbered exactly as here, in the same round trip as the end.

A turn's publisher is fenced by its run attempt (`attempt=`): `take_over()` makes the
attempt the owner of the run's writes, and a batch of an older attempt (one that was
presumed dead and replaced) is refused with `StaleAttempt`, atomically with the write, so
a replaced attempt never adds events after its successor has read where they end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import structlog
from pydantic import ValidationError
from redis import exceptions as redis_errors

from orchestrator.aio import cancel_and_wait
from orchestrator.errors import (
    OrchestratorError,
    PayloadError,
    StaleAttempt,
    StoreError,
    StoreUnavailable,
)
from orchestrator.events import EventYield, ResponseYield, output_from_json, output_to_json
from orchestrator.keys import Keys
from orchestrator.runs import StatusEntry, StreamEntry, TreeProgress
from orchestrator.store._codec import ascii_digits, parse_int, resolve, text
from orchestrator.store.connection import (
    Redis,
    connect,
    read_timeout,
    registered_script,
    run_script,
    to_store_error,
    translate_errors,
)

__all__ = [
    "ADD_ENTRY_FUNCTION_LUA",
    "DEFAULT_BLOCK_MS",
    "IDLE_TTL_S",
    "MAX_ITEMS_PER_ENTRY",
    "MULTI_WIRE_VERSION",
    "PUBLISH_FUNCTION_LUA",
    "TAKE_OVER_FUNCTION_LUA",
    "WIRE_VERSION",
    "EventPublisher",
    "LastBatch",
    "PublisherStats",
    "StreamPage",
    "StreamReader",
    "StreamTtls",
    "TakenOver",
    "connect_blocking",
    "decode_entry",
    "decode_item",
    "decode_items",
    "decode_run_items",
    "item_count",
    "item_id",
    "split_item_id",
    "statuses_call",
    "taken_over",
]

log = structlog.get_logger(__name__)

WIRE_VERSION = "1"
# An entry of several outputs (see the module docstring).
MULTI_WIRE_VERSION = "2"
# The most outputs one entry holds (a longer batch takes several entries).
MAX_ITEMS_PER_ENTRY = 64
# How long a live tail waits in one blocking XREAD; its client's read timeout must exceed it.
DEFAULT_BLOCK_MS = 5000
# How many entries one read of a tail takes: an entry holds up to 64 outputs, so this
# bounds one reply of a live tail (an SSE client's, a CLI's) near 8,000 outputs.
TAIL_COUNT = 128
_KINDS = frozenset({"event", "response", "status"})
_REDIS_FAILURES: tuple[type[BaseException], ...] = (redis_errors.RedisError, OSError)


def connect_blocking(url: str, *, timeout_s: float, connect_timeout_s: float) -> Redis:
    """A client for blocking stream reads (`StreamReader(blocking=...)`): its read timeout
    is `timeout_s` past the longest block, so a block never times out by itself."""
    return connect(
        url, timeout_s=timeout_s + DEFAULT_BLOCK_MS / 1000, connect_timeout_s=connect_timeout_s
    )


@dataclass
class PublisherStats:
    """Counters for benchmarks and debugging."""

    published: int = 0  # entries accepted by publish() / publish_status()
    delivered: int = 0  # entries confirmed written to Redis
    batches: int = 0  # transactions that delivered a batch
    largest_batch: int = 0
    retries: int = 0  # sends repeated after a failure
    failures: int = 0  # deliveries given up (the batch is kept for the next flush)


@dataclass(frozen=True)
class _Pending:
    kind: Literal["event", "response", "status", "checkpoint"]
    data: bytes
    call_seq: tuple[str, int] | None = None


# One stream entry: the fields every reader parses (`StreamEntry`), written the same way
# by every script that appends to a session stream (a publisher's batch, a batch of forks'
# status entries, a run's terminal entry in its end). `root` "" = the run is its own root.
# `add_items` writes several outputs, {kind, run, data, root} x n (a flat table), as few
# entries as `per` (items per entry, at most 64) allows: one item alone as a v1 entry,
# more as v2 entries (the module docstring has both formats).
ADD_ENTRY_FUNCTION_LUA = """
local function add_entry(stream, maxlen, kind, run, data, root)
  if root == '' then
    return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
      'v', '1', 'kind', kind, 'run', run, 'data', data)
  end
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
    'v', '1', 'kind', kind, 'run', run, 'data', data, 'root', root)
end
local function add_items(stream, maxlen, items, per)
  local n = #items / 4
  per = math.max(1, math.min(tonumber(per) or 1, 64))
  local first = 0
  while first < n do
    local count = math.min(per, n - first)
    if count == 1 then
      local at = 4 * first
      add_entry(stream, maxlen, items[at + 1], items[at + 2], items[at + 3], items[at + 4])
    else
      local args = {'XADD', stream, 'MAXLEN', '~', maxlen, '*', 'v', '2', 'n', tostring(count)}
      for i = 0, count - 1 do
        local at, s = 4 * (first + i), tostring(i)
        args[#args + 1] = 'k' .. s
        args[#args + 1] = items[at + 1]
        args[#args + 1] = 'r' .. s
        args[#args + 1] = items[at + 2]
        args[#args + 1] = 'd' .. s
        args[#args + 1] = items[at + 3]
        if items[at + 4] ~= '' then
          args[#args + 1] = 'o' .. s
          args[#args + 1] = items[at + 4]
        end
      end
      redis.call(unpack(args))
    end
    first = first + count
  end
end
"""

# One batch of a publisher, atomically: refuse it if a newer attempt owns the run's writes
# (or, when the fence is not this attempt's, saved the checkpoint), else append the
# entries, note the highest event_seq per agent call and the batch number (one HSET: the
# number is field "batch:<publisher id>" of the seqs hash), save the checkpoint if the
# batch carries one (its first one clears any TTL the key had), and (now and then) push
# the idle TTLs back. The publishers hash is only read, for the batch markers older
# versions kept there. Lua functions, shared by the publisher's own script
# (`_PUBLISH_LUA`: `publish`) and a run's end (`RunStore.end` with `EndWrites.batch`: a
# turn's last batch, checked first, `publish_check`, and written with the end's own
# writes, `publish_write`), their arguments read from ARGV after `base` (0 in the
# publisher's own script):
# Keys: stream, seqs, publishers, fence, checkpoint
# ARGV[base + 1...]: attempt ("" = unfenced), publisher id, batch number, maxlen, idle ttl
#       ("" = none), refresh (two flags: "1?" set the stream's and seqs' TTLs, "?1" the
#       fence's; the fence's is fresh after a take-over), fence ttl, run id, root ("" =
#       the run), n seqs, (call, seq) x n, n entries, (kind, data) x n,
#       checkpoint state ("" = none),
#       check ("1": a batch this publisher may have delivered already; its marker says),
#       persist ("1": the publisher's first checkpoint: clear the key's TTL; "2": the
#       publisher has saved a checkpoint before, so the key's attempt is its own),
#       items per entry (`add_items`; absent = 1)
# Returns {1} written, {2} written before, {0, fence} refused (nothing written).
PUBLISH_FUNCTION_LUA = """
local function batch_at(base)
  local nseqs = tonumber(ARGV[base + 10])
  local at = base + 11 + 2 * nseqs
  local nentries = tonumber(ARGV[at])
  return nseqs, at, nentries, ARGV[at + 1 + 2 * nentries]
end
-- Whether to write the batch: {1} yes, {2} written before, {0, fence} refused.
-- `fence_ex` (optional): read the fence with GETEX, giving it this TTL (s) in the same
-- command (a run's end, which sets it anyway); a refusal gives it the longer of that and
-- the batch's fence TTL (a live run's): the fence is a newer attempt's, live or ended,
-- and must not expire before the stream it guards. `fenced` on the reply: the fence got
-- `fence_ex`.
local function publish_check(seqs, publishers, fence, checkpoint, base, fence_ex)
  local _, at, nentries, state = batch_at(base)
  local attempt = tonumber(ARGV[base + 1])
  if ARGV[at + 2 + 2 * nentries] == '1' then
    local done = tonumber(redis.call('HGET', seqs, 'batch:' .. ARGV[base + 2])
      or redis.call('HGET', publishers, ARGV[base + 2]))
    if done and done >= tonumber(ARGV[base + 3]) then return {2} end
  end
  if attempt then
    local owner
    if fence_ex then
      owner = tonumber(redis.call('GETEX', fence, 'EX', fence_ex))
    else
      owner = tonumber(redis.call('GET', fence))
    end
    local refused = nil
    if owner and owner > attempt then refused = owner end
    -- While the fence is this attempt's no newer checkpoint exists (a newer attempt takes
    -- the fence before it saves; a take-over is refused past a newer checkpoint). Without
    -- it, the checkpoint's own attempt says.
    if not refused and state ~= '' and owner ~= attempt then
      local saved = tonumber(redis.call('HGET', checkpoint, 'attempt'))
      if saved and saved > attempt then refused = saved end
    end
    if refused then
      if fence_ex and owner then
        redis.call('EXPIRE', fence, math.max(tonumber(fence_ex), tonumber(ARGV[base + 7])))
      end
      return {0, refused}
    end
    if fence_ex then return {1, fenced = true} end
  end
  return {1}
end
-- Write a checked batch. `marks`: more {field, value} pairs for its seqs HSET; `keep`:
-- save its checkpoint's state (false: the caller drops the state anyway; its attempt,
-- the checkpoint's fence, is written all the same unless an earlier batch of the
-- publisher wrote it: "2" below); `after`: more items ({kind, run, data, root} x n) to
-- write after the batch's, in the same entries (a run's terminal status).
local function publish_write(stream, seqs, fence, checkpoint, base, marks, keep, after)
  local nseqs, at, nentries, state = batch_at(base)
  local items = {}
  for i = 0, nentries - 1 do
    items[#items + 1] = ARGV[at + 1 + 2 * i]
    items[#items + 1] = ARGV[base + 8]
    items[#items + 1] = ARGV[at + 2 + 2 * i]
    items[#items + 1] = ARGV[base + 9]
  end
  for i = 1, #(after or {}) do items[#items + 1] = after[i] end
  add_items(stream, ARGV[base + 4], items, ARGV[at + 4 + 2 * nentries])
  local pairs_ = {'batch:' .. ARGV[base + 2], ARGV[base + 3]}
  for i = 0, nseqs - 1 do
    pairs_[#pairs_ + 1] = ARGV[base + 11 + 2 * i]
    pairs_[#pairs_ + 1] = ARGV[base + 12 + 2 * i]
  end
  for i = 1, #marks do pairs_[#pairs_ + 1] = marks[i] end
  redis.call('HSET', seqs, unpack(pairs_))
  local saved = ARGV[at + 3 + 2 * nentries]
  if state ~= '' and keep then
    redis.call('HSET', checkpoint, 'attempt', ARGV[base + 1], 'state', state)
    if saved == '1' then redis.call('PERSIST', checkpoint) end
  elseif state ~= '' and saved ~= '2' then
    redis.call('HSET', checkpoint, 'attempt', ARGV[base + 1])
  end
  local ttl, refresh = ARGV[base + 5], ARGV[base + 6]
  if ttl ~= '' and string.sub(refresh, 1, 1) == '1' then
    redis.call('EXPIRE', stream, ttl)
    redis.call('EXPIRE', seqs, ttl)
  end
  if ARGV[base + 1] ~= '' and string.sub(refresh, 2, 2) == '1' then
    redis.call('EXPIRE', fence, ARGV[base + 7])
  end
end
local function publish(stream, seqs, publishers, fence, checkpoint, base)
  local checked = publish_check(seqs, publishers, fence, checkpoint, base, nil)
  if checked[1] == 1 then
    publish_write(stream, seqs, fence, checkpoint, base, {}, true, nil)
  end
  return checked
end
"""
# A publisher's batch: `publish` above on its own. KEYS: stream, seqs, publishers, fence,
# checkpoint; ARGV: as `publish`'s (base 0). Reply: as `publish`'s.
_PUBLISH_LUA = (
    ADD_ENTRY_FUNCTION_LUA
    + PUBLISH_FUNCTION_LUA
    + "return publish(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], 0)\n"
)
# `take_over` as a Lua function, shared by the publisher's own script (`_TAKE_OVER_LUA`)
# and the job's start (`RunStore.start(take_over_ttl_s=)`, which runs it after its own
# checks and before its writes, so a refused take-over starts nothing): refuse if a newer
# attempt owns the run's writes or saved the run's checkpoint, else own them and return
# the highest event_seq published for the run ("" = none) and the run's checkpoint
# ("" = none), read after the take-over, so no older attempt can change it in between.
# So while the fence is an attempt's own, no newer checkpoint exists (a batch then need
# not read the checkpoint's attempt). The fence is read and written by one SET ... GET; a
# refused take-over puts back what it found (a fence it found gets the fence ttl again).
# Arguments: fence, seqs and checkpoint keys, attempt, fence ttl s, run id.
# Returns {1, seq, checkpoint, checkpoint key found (1/0)} or {0, newer attempt}.
TAKE_OVER_FUNCTION_LUA = """
local function take_over(fence, seqs, checkpoint, attempt_arg, ttl, run_id)
  local attempt = tonumber(attempt_arg)
  local old = redis.call('SET', fence, attempt_arg, 'EX', ttl, 'GET')
  local saved = redis.call('HMGET', checkpoint, 'attempt', 'state')
  local newer = tonumber(old)
  if not (newer and newer > attempt) then newer = tonumber(saved[1]) end
  if newer and newer > attempt then
    if old then redis.call('SET', fence, old, 'EX', ttl) else redis.call('DEL', fence) end
    return {0, newer}
  end
  local found = (saved[1] or saved[2]) and 1 or 0
  return {1, redis.call('HGET', seqs, run_id) or '', saved[2] or '', found}
end
"""
# `take_over` in one atomic script. KEYS: fence, seqs, checkpoint; ARGV: attempt, fence
# ttl, run id. Reply: as `take_over` above.
_TAKE_OVER_LUA = (
    TAKE_OVER_FUNCTION_LUA
    + "return take_over(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])\n"
)
# A publisher's stream keys (and its write fence) expire this long after their last write.
IDLE_TTL_S = 7 * 86_400


@dataclass(frozen=True)
class TakenOver:
    """What a take-over of a run's writes found, made by another script for a publisher
    to `adopt` (`RunStore.start(take_over_ttl_s=)` folds it into a job's start)."""

    # The highest event_seq published for the run (None: none yet).
    last_seq: int | None
    # The run's checkpoint as it was once the attempt owned the writes (None: none).
    checkpoint: bytes | None
    # The checkpoint key existed (it may carry a TTL a first save must clear).
    checkpoint_found: bool
    # The fence TTL the take-over set, and when (loop time, taken before the script).
    fence_ttl_s: int
    at: float


def taken_over(reply: Sequence[Any], run_id: str, fence_ttl_s: int, at: float) -> TakenOver:
    """The `TakenOver` of a successful take-over's reply (`{1, seq, state, found}`)."""
    raw, state = reply[1], reply[2]
    if isinstance(state, str):
        state = state.encode()
    return TakenOver(
        last_seq=None if raw in (b"", "") else parse_int(raw, f"event_seq of {run_id!r}"),
        checkpoint=None if state == b"" else state,
        checkpoint_found=bool(int(reply[3])),
        fence_ttl_s=fence_ttl_s,
        at=at,
    )


# A busy publisher pushes its keys' idle TTLs back at most this often (they are days).
_REFRESH_EVERY_S = 60.0


class StreamTtls:
    """When the idle TTLs of each session's stream keys were last pushed back by the
    publishers that share this object (one per worker), so the forks of a fan-out, which
    publish to the same session stream, do not each repeat it in their first batch.

    A publisher without one keeps its own clock (its first batch pushes them back)."""

    _PRUNE_AT = 1024

    def __init__(self) -> None:
        self._at: dict[str, float] = {}
        self._prune_at = self._PRUNE_AT

    def due(self, session_id: str, now: float, every: float) -> bool:
        """Whether the session's stream TTLs should be pushed back now."""
        at = self._at.get(session_id)
        return at is None or now - at >= every

    def note(self, session_id: str, at: float, every: float) -> None:
        """The session's stream TTLs were pushed back at `at` (loop time)."""
        if len(self._at) >= self._prune_at:
            self._at = {s: t for s, t in self._at.items() if at - t < every}
            # Many sessions live at once: prune again only once they have doubled (a
            # scan on every note would be quadratic in the live sessions).
            self._prune_at = max(self._PRUNE_AT, 2 * len(self._at))
        self._at[session_id] = max(at, self._at.get(session_id, at))


@dataclass
class _Waiter:
    target: int
    future: asyncio.Future[None] = field(repr=False)


class LastBatch:
    """A publisher's last batch (`EventPublisher.take_last`), written by another script
    in the same round trip as its own writes (a run's end: `EndWrites.batch`), with the
    batch's fence check, marker and event_seqs exactly as the publisher's own script.

    `args()` are the `publish` Lua function's arguments; once they were sent without a
    known outcome (`sent`), a resend checks the batch's marker, so it is never written
    twice. `delivered()` confirms it; `send()` writes it on its own (the other script
    did not run it)."""

    def __init__(self, publisher: EventPublisher, entries: list[_Pending]) -> None:
        self._publisher = publisher
        self._entries = entries
        self.sent = False
        self.is_delivered = False
        self.is_dropped = False

    def args(self) -> list[Any]:
        """The batch for `PUBLISH_FUNCTION_LUA` (its TTLs left to the other script)."""
        check = self.sent or self._publisher._named
        self.sent = True
        return self._publisher._script_args(
            self._entries, refresh=False, check=check, refresh_fence=False
        )

    def delivered(self) -> None:
        """The other script wrote it (or found it written)."""
        if not self.is_delivered:
            self.is_delivered = True
            self._publisher._confirmed(self._entries)

    def refused(self, owner: Any) -> NoReturn:
        """The other script found a newer attempt's fence: raise its `StaleAttempt`."""
        self._publisher._check_fence(str(owner))
        raise StoreError(f"last batch of run {self._publisher.run_id!r} refused")

    def drop(self) -> None:
        """The run was ended by someone else (the reaper, an abort): its terminal entry
        stays its stream's last, so this batch is not written (`send` does nothing)."""
        self.is_dropped = True

    async def send(self) -> None:
        """Write the batch with the publisher's own script (retried as its batches are),
        unless it is delivered or dropped already."""
        if not self.is_delivered and not self.is_dropped:
            await self._publisher._send_last(self)


class EventPublisher:
    """Publishes one run's outputs to its session stream, batched, in order, exactly once.

    `publish()` and `publish_status()` return at once; `await flush()` returns once
    everything published before it is in Redis. A send that fails with a connection
    error is retried after `retry_delays_s`; when those run out the batch is kept, the
    error is raised from `flush()`, and the next `publish()` or `flush()` tries again.

    `attempt` fences the writes (see the module docstring); `taken` is a take-over of
    the run's writes for that attempt made by another script (`RunStore.start`), which
    the first `take_over_and_load` adopts instead of taking over again. `publisher_id`
    names the publisher for good: a second publisher with the same id does not repeat a
    batch the first one delivered (for writes retried by another process, such as a
    run's end).

    `items_per_entry`: how many outputs of one batch share a stream entry (one XADD); 1
    (the default) writes one output per entry, which readers of every version read (see
    the module docstring; workers take `Settings.stream_items_per_entry`).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        session_id: str,
        run_id: str,
        root_run_id: str | None = None,
        maxlen: int = 100_000,
        ttl_after_end_s: int = 86_400,
        idle_ttl_s: int | None = IDLE_TTL_S,
        retry_delays_s: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8),
        attempt: int | None = None,
        publisher_id: str | None = None,
        stream_ttls: StreamTtls | None = None,
        taken: TakenOver | None = None,
        items_per_entry: int = 1,
    ) -> None:
        self._redis = redis
        self.session_id = session_id
        self.run_id = run_id
        self.root_run_id = root_run_id if root_run_id is not None else run_id
        self._stream = keys.events(session_id)
        self._seqs = keys.seqs(session_id)
        self._publishers = keys.publishers(session_id)
        self._fence = keys.run_fence(session_id, run_id)
        self._checkpoint = keys.checkpoint(session_id, run_id)
        self._script = registered_script(redis, _PUBLISH_LUA)
        self._take_over = registered_script(redis, _TAKE_OVER_LUA)
        # When the stream's and seqs' TTLs were last set (by this publisher, or by any
        # sharing `stream_ttls`), and the fence's (a take-over sets the fence's).
        self._stream_ttls = stream_ttls if stream_ttls is not None else StreamTtls()
        self._fence_set_at: float | None = None
        # The publisher's first checkpoint also clears any TTL the checkpoint key had
        # (unless its take-over found no checkpoint key: see `adopt`).
        self._checkpointed = False
        # The publisher has saved a checkpoint (so the key's attempt is its attempt).
        self._saved_checkpoint = False
        # A take-over made for this publisher by another script (`adopt`ed by the first
        # `take_over_and_load`).
        self._taken = taken
        self.attempt = attempt
        self._maxlen = maxlen
        self._items_per_entry = max(1, min(MAX_ITEMS_PER_ENTRY, items_per_entry))
        self._ttl_after_end_s = ttl_after_end_s
        self._idle_ttl_s = idle_ttl_s
        self._retry_delays = tuple(retry_delays_s)
        self.publisher_id = publisher_id or uuid.uuid4().hex
        self.stats = PublisherStats()
        self.last_error: OrchestratorError | None = None
        self._pending: list[_Pending] = []
        # A batch whose delivery is not confirmed yet; retried before anything newer.
        self._unconfirmed: list[_Pending] | None = None
        self._check_marker = False
        # A named publisher may have delivered its batches in an earlier life.
        self._named = publisher_id is not None
        self._batch_no = 0
        self._accepted = 0
        self._delivered = 0
        self._waiters: list[_Waiter] = []
        self._local_seqs: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # `take_last`: the flusher sends no new batch (what is buffered is the last one).
        self._holding = False
        # `hold`: nor until a `flush()`.
        self._held = False

    # -- publishing -----------------------------------------------------------------

    def publish(self, output: ResponseYield | EventYield) -> None:
        """Queue one output for the stream. Never blocks; call inside a running loop."""
        kind: Literal["event", "response"] = (
            "event" if isinstance(output, EventYield) else "response"
        )
        origin = output.origin
        call_seq = None if origin is None else (origin.agent_call_id, origin.event_seq)
        self._enqueue(_Pending(kind, output_to_json(output), call_seq))

    def publish_status(self, status: StatusEntry) -> None:
        """Queue a run status marker for the stream. Never blocks."""
        self._enqueue(_Pending("status", status.to_json()))

    def save_checkpoint(self, state: bytes) -> None:
        """Queue the run's checkpoint (fenced by `attempt`): it is written in the same
        atomic batch as every output published before it, so it never points past an
        undelivered event. `await flush()` to know it is saved; a newer attempt's fence
        refuses it with `StaleAttempt`. Never blocks."""
        if self.attempt is None:
            raise ValueError("save_checkpoint() needs a publisher made with attempt=")
        self._enqueue(_Pending("checkpoint", state))

    def hold(self) -> None:
        """Send no new batch (the one in flight completes): everything not yet on its way,
        and what is published from now on, waits for `take_last` to ride with the run's
        end in one round trip, or for a `flush()`, which ends the hold (as does one
        already waiting). For a turn that has answered and only saves its memory before
        its end (see `EndingCheckpointer`). Not while a checkpoint waits to be sent: a
        crash during the save must find it."""
        if any(entry.kind == "checkpoint" for entry in self._pending):
            return
        self._held = True

    async def flush(self) -> None:
        """Return once everything published before this call is in Redis (ending a
        `hold()`).

        Raises `StoreError` (`StoreUnavailable` for connection trouble) if delivery failed
        after the retries; nothing is dropped, so calling `flush()` again retries.
        """
        self._held = False
        if self._delivered >= self._accepted:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(self._accepted, future))
        self._ensure_flusher()
        await future

    async def take_over(self) -> int | None:
        """Make this publisher's attempt the owner of the run's writes, and return the
        highest event_seq published for the run so far (None: none yet).

        Atomic: every batch of an older attempt is either already counted in the returned
        seq or refused from now on. Raises `StaleAttempt` if a newer attempt took over.
        """
        if self.attempt is None:
            raise ValueError("take_over() needs a publisher made with attempt=")
        last, _ = await self.take_over_and_load()
        return last

    async def take_over_and_load(self) -> tuple[int | None, bytes | None]:
        """`take_over()`, and the run's checkpoint as it is once this attempt owns the
        writes (None: there is none): one round trip (none the first time if the
        publisher was made with `taken`)."""
        if self.attempt is None:
            raise ValueError("take_over() needs a publisher made with attempt=")
        if self._taken is not None:
            taken, self._taken = self._taken, None
            return self.adopt(taken)
        ttl = self._fence_ttl_s()
        keys = [self._fence, self._seqs, self._checkpoint]
        args = [str(self.attempt), str(ttl), self.run_id]
        now = asyncio.get_running_loop().time()
        async with translate_errors("take over the run's writes"):
            reply = await run_script(self._redis, self._take_over, keys, args)
        if int(reply[0]) == 0:
            self._check_fence(str(reply[1]))
        return self.adopt(taken_over(reply, self.run_id, ttl, now))

    def adopt(self, taken: TakenOver) -> tuple[int | None, bytes | None]:
        """Carry on from a take-over of this publisher's attempt made by another script
        (`RunStore.start(take_over_ttl_s=)`): what `take_over_and_load` returns, without
        its round trip."""
        if taken.fence_ttl_s == self._fence_ttl_s():
            self._fence_set_at = taken.at
        if not taken.checkpoint_found:
            # No checkpoint key, so none with a TTL: the first save need not PERSIST it.
            # Only this run's attempts write it; an older one is fenced off from now on, a
            # newer one refuses this one's saves, and an end's EXPIRE of a missing key is
            # a no-op.
            self._checkpointed = True
        local = self._local_seqs.get(self.run_id)
        candidates = [s for s in (taken.last_seq, local) if s is not None]
        return (max(candidates) if candidates else None), taken.checkpoint

    async def take_last(self) -> LastBatch | None:
        """Stop publishing and hand over what is still buffered as the run's last batch,
        for the run's end to write in its own script (`EndWrites.batch`): one round trip
        for both. Waits for the batch in flight, if any (so the order holds); None if
        nothing is left. Raises as `flush()` would if the batch in flight failed."""
        self._closed = True
        self._holding = True
        task = self._task
        if task is not None and not task.done():
            await task
        self._task = None
        if self._unconfirmed is not None:  # the flusher gave up on it: one more try
            self._ensure_flusher()  # (holding: it sends only that batch, as flush() would)
            task, self._task = self._task, None
            if task is not None:
                await task
            if self._unconfirmed is not None:
                assert self.last_error is not None
                raise self.last_error
        if not self._pending:
            return None
        batch, self._pending = self._pending, []
        self._batch_no += 1
        return LastBatch(self, batch)

    async def _send_last(self, last: LastBatch) -> None:
        self._check_marker = last.sent or self._named
        last.sent = True
        await self._deliver(last._entries)
        last.delivered()

    def abandon(self) -> None:
        """Drop whatever is not delivered yet and write nothing more (the run was handed
        back: its next attempt resumes from the last checkpoint)."""
        self._closed = True
        self._pending.clear()
        self._unconfirmed = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.cancel()

    async def close(self, expire: bool) -> None:
        """Flush, stop the background task, and (if `expire`) let the session keys expire.

        With `expire=True` the stream and its bookkeeping hashes get `ttl_after_end_s`.
        Publishing after `close()` raises `StoreError`.
        """
        self._closed = True
        try:
            await self.flush()
        finally:
            await self._stop_task()
        if expire:
            await self._expire_keys()

    async def _expire_keys(self) -> None:
        async with (
            translate_errors("expire session stream"),
            self._redis.pipeline(transaction=False) as pipe,
        ):
            for key in (self._stream, self._seqs, self._publishers, self._fence):
                pipe.expire(key, self._ttl_after_end_s)
            await pipe.execute()

    async def last_seq(self, agent_call_id: str) -> int | None:
        """The highest event_seq published for `agent_call_id` (by anyone), or None."""
        async with translate_errors("read last event_seq"):
            raw = await resolve(self._redis.hget(self._seqs, agent_call_id))
        remote = None if raw is None else parse_int(raw, f"event_seq of {agent_call_id!r}")
        local = self._local_seqs.get(agent_call_id)
        candidates = [s for s in (remote, local) if s is not None]
        return max(candidates) if candidates else None

    @property
    def pending(self) -> int:
        """Entries published but not yet confirmed in Redis."""
        return self._accepted - self._delivered

    # -- internals --------------------------------------------------------------------

    def _enqueue(self, entry: _Pending) -> None:
        if self._closed:
            raise StoreError(f"publisher of run {self.run_id!r} is closed")
        self._pending.append(entry)
        self._accepted += 1
        if entry.kind != "checkpoint":
            self.stats.published += 1
        if entry.call_seq is not None:
            call, seq = entry.call_seq
            if seq > self._local_seqs.get(call, seq - 1):
                self._local_seqs[call] = seq
        if not self._held:
            self._ensure_flusher()

    def _ensure_flusher(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._flush_loop(), name=f"event-publisher:{self.run_id}"
            )

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _flush_loop(self) -> None:
        while self._unconfirmed is not None or (
            self._pending and not (self._holding or (self._held and not self._waiters))
        ):
            if self._unconfirmed is None:
                self._unconfirmed, self._pending = self._pending, []
                self._batch_no += 1
                self._check_marker = self._named
            batch = self._unconfirmed
            try:
                await self._deliver(batch)
            except (StoreError, StaleAttempt) as exc:
                self._give_up(exc)
                return
            self._unconfirmed = None
            self._confirmed(batch)

    def _confirmed(self, batch: list[_Pending]) -> None:
        self._delivered += len(batch)
        entries = sum(1 for e in batch if e.kind != "checkpoint")
        self.stats.delivered += entries
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, entries)
        self._wake_waiters()

    async def _deliver(self, batch: list[_Pending]) -> None:
        last: BaseException | None = None
        for attempt, delay in enumerate((0.0, *self._retry_delays)):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(delay)
            try:
                # After an ambiguous failure the script may have run: its marker says
                # (checked by the script itself, in the same round trip).
                check, self._check_marker = self._check_marker, True
                await self._send(batch, check)
                return
            except redis_errors.WatchError as exc:
                # A take-over raced this batch (it was not written): the retry says who won.
                last = exc
                self._check_marker = False
            except redis_errors.ResponseError as exc:
                # Redis refused a command: retrying the same batch will not help, and a
                # partly applied EXEC must not be mistaken for a delivered batch.
                self._batch_no += 1
                self._check_marker = False
                raise to_store_error(exc, "event publish") from exc
            except _REDIS_FAILURES as exc:
                last = exc
                log.info("stream.publish_retry", run_id=self.run_id, attempt=attempt, error=exc)
        assert last is not None
        raise to_store_error(last, "event publish") from last

    def _fence_ttl_s(self) -> int:
        return self._idle_ttl_s if self._idle_ttl_s is not None else self._ttl_after_end_s

    def _check_fence(self, raw: Any) -> None:
        owner = None if raw is None else parse_int(raw, f"write fence of {self.run_id!r}")
        if owner is not None and self.attempt is not None and owner > self.attempt:
            raise StaleAttempt(
                f"attempt {self.attempt} of run {self.run_id!r} may not write: attempt"
                f" {owner} has taken over",
                run_id=self.run_id,
                attempt=self.attempt,
                current_attempt=owner,
            )

    async def _send(self, batch: list[_Pending], check: bool) -> None:
        now = asyncio.get_running_loop().time()
        # Another run's end may have cut the stream's TTL to its retention meanwhile: push
        # it back well within that (and at least once a minute).
        every = min(_REFRESH_EVERY_S, self._ttl_after_end_s / 2)
        refresh = self._stream_ttls.due(self.session_id, now, every)
        fence = self._fence_set_at is None or now - self._fence_set_at >= every
        keys = [self._stream, self._seqs, self._publishers, self._fence, self._checkpoint]
        args = self._script_args(batch, refresh, check, refresh_fence=fence)
        reply = await run_script(self._redis, self._script, keys, args)
        if int(reply[0]) == 0:
            self._check_fence(str(reply[1]))
        if refresh:
            self._stream_ttls.note(self.session_id, now, every)
        if fence:
            self._fence_set_at = now
        if any(entry.kind == "checkpoint" for entry in batch):
            self._checkpointed = True
            self._saved_checkpoint = True

    def _script_args(
        self,
        batch: list[_Pending],
        refresh: bool,
        check: bool = False,
        *,
        refresh_fence: bool | None = None,
    ) -> list[Any]:
        fence = refresh if refresh_fence is None else refresh_fence
        seqs: dict[str, int] = {}
        entries: list[Any] = []
        state: bytes = b""
        for entry in batch:
            if entry.kind == "checkpoint":
                state = entry.data  # the last one wins: it follows all the others
                continue
            entries += [entry.kind, entry.data]
            if entry.call_seq is not None:
                call, seq = entry.call_seq
                seqs[call] = max(seq, seqs.get(call, seq))
        args: list[Any] = [
            "" if self.attempt is None else str(self.attempt),
            self.publisher_id,
            str(self._batch_no),
            str(self._maxlen),
            "" if self._idle_ttl_s is None else str(self._idle_ttl_s),
            ("1" if refresh else "0") + ("1" if fence else "0"),
            str(self._fence_ttl_s()),
            self.run_id,
            "" if self.root_run_id == self.run_id else self.root_run_id,
            str(len(seqs)),
        ]
        for call, seq in seqs.items():
            args += [call, str(seq)]
        args.append(str(len(entries) // 2))
        args += entries
        args.append(state)
        args.append("1" if check else "0")
        args.append("2" if self._saved_checkpoint else "0" if self._checkpointed else "1")
        args.append(str(self._items_per_entry))
        return args

    def _give_up(self, exc: OrchestratorError) -> None:
        self.last_error = exc
        self.stats.failures += 1
        log.error("stream.publish_failed", run_id=self.run_id, pending=self.pending, error=str(exc))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    def _wake_waiters(self) -> None:
        still: list[_Waiter] = []
        for waiter in self._waiters:
            if waiter.target <= self._delivered:
                if not waiter.future.done():
                    waiter.future.set_result(None)
            else:
                still.append(waiter)
        self._waiters = still


# Status entries of several runs of one session (a batch of forks queued), atomically,
# unfenced and without a batch marker (sent once: nothing retries them by publisher),
# `per` of them to an entry (`add_items`).
# KEYS: stream, seqs; ARGV: maxlen, idle ttl, n, (run, root, data) x n
# ("" root = the run), per. The session's stream keys get the idle TTL, as a first batch
# does.
_STATUSES_LUA = (
    ADD_ENTRY_FUNCTION_LUA
    + """
local n = tonumber(ARGV[3])
local items = {}
for i = 0, n - 1 do
  items[#items + 1] = 'status'
  items[#items + 1] = ARGV[4 + 3 * i]
  items[#items + 1] = ARGV[6 + 3 * i]
  items[#items + 1] = ARGV[5 + 3 * i]
end
add_items(KEYS[1], ARGV[1], items, ARGV[4 + 3 * n])
for i = 1, 2 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return n
"""
)


def statuses_call(
    redis: Redis,
    keys: Keys,
    statuses: Sequence[tuple[StatusEntry, str]],
    *,
    session_id: str,
    maxlen: int = 100_000,
    ttl_s: int = 7 * 86_400,
    items_per_entry: int = 1,
) -> tuple[Any, list[str], list[Any]]:
    """The script call that appends the status entries of several runs of one session
    (each with its root run id), in order, in one command: what a fresh publisher sends for
    each of them, without a batch marker (so, not for a write that may be repeated), up
    to `items_per_entry` of them in one stream entry.
    For a caller batching it with other writes in one round trip (`run_scripts`)."""
    script = redis.register_script(_STATUSES_LUA)
    names = [keys.events(session_id), keys.seqs(session_id)]
    args: list[Any] = [str(maxlen), str(ttl_s), str(len(statuses))]
    for status, root in statuses:
        args += [status.run_id, "" if root == status.run_id else root, status.to_json()]
    args.append(str(max(1, min(MAX_ITEMS_PER_ENTRY, items_per_entry))))
    return script, names, args


@dataclass(frozen=True)
class StreamPage:
    """One read's decoded entries and the id of the last raw entry it consumed.

    `last_id` also covers malformed entries that were skipped, so resuming after it never
    re-reads them; it is None when nothing was read (keep your cursor).
    """

    entries: list[StreamEntry]
    last_id: str | None


class StreamReader:
    """Reads session streams: pages with `read`, or a resumable live feed with `tail`.

    Entries are validated as they are decoded; one that does not decode (bad JSON,
    unknown kind or version, a failing model) is skipped with a warning.

    Blocking reads go to `blocking` (default: `redis`), a client whose read timeout should
    exceed the block time; a block is cut to fit below that client's timeout regardless,
    so a blocking read never times out merely for lack of new entries.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        blocking: Redis | None = None,
        reconnect_attempts: int = 10,
        reconnect_backoff_s: float = 0.05,
    ) -> None:
        self._redis = redis
        self._blocking = blocking if blocking is not None else redis
        timeout = read_timeout(self._blocking)
        # Leave a margin (up to 1 s) between the longest block and the read timeout.
        self._max_block_ms = (
            None if timeout is None else max(1, int((timeout - min(1.0, timeout / 2)) * 1000))
        )
        self._keys = keys
        self._reconnect_attempts = reconnect_attempts
        self._reconnect_backoff_s = reconnect_backoff_s

    async def read(
        self,
        session_id: str,
        *,
        after: str | None = None,
        count: int = 500,
        block_ms: int | None = None,
    ) -> list[StreamEntry]:
        """About `count` entries after `after` (None: from the start; "$": only new ones).

        `count` counts stream entries, each of which may hold several outputs: a page has
        at most `count` x `MAX_ITEMS_PER_ENTRY` of them. With `block_ms`, waits up to that
        long for an entry when there is none yet.
        """
        page = await self.read_page(session_id, after=after, count=count, block_ms=block_ms)
        return page.entries

    async def read_page(
        self,
        session_id: str,
        *,
        after: str | None = None,
        count: int = 500,
        block_ms: int | None = None,
    ) -> StreamPage:
        """Like `read`, and also says which raw entry to resume after."""
        stream = self._keys.events(session_id)
        start, skip = _resume_point("0-0" if after is None else after)
        raw = await self._xread(stream, start, count, block_ms)
        return self._decode_page(stream, raw, skip)

    async def tail(
        self,
        session_id: str,
        *,
        after: str | None = None,
        run_id: str | None = None,
        follow: bool = True,
        block_ms: int = DEFAULT_BLOCK_MS,
        count: int = TAIL_COUNT,
        stop_at_terminal: bool = False,
    ) -> AsyncGenerator[StreamEntry, None]:
        """Yield the session's entries after `after` (None: from the start; "$": only new).

        `run_id` keeps only the entries of that run and of its forks. With `follow=False`
        it stops once the stream is exhausted; otherwise it waits for more (each wait up
        to `block_ms`).
        `stop_at_terminal` stops once the run has ended (with `run_id`: the run and every
        fork of it; without: at the first terminal status entry).
        A dropped connection is retried, resuming after the last entry consumed.
        `count` is how many stream entries one read takes (each may hold several outputs).
        """
        stream = self._keys.events(session_id)
        cursor = "0-0" if after is None else after
        failures = 0
        tree = TreeProgress(run_id) if run_id is not None else None
        while True:
            try:
                if cursor == "$":
                    cursor = await self._last_id(stream)
                start, skip = _resume_point(cursor)
                raw = await self._xread(stream, start, count, block_ms if follow else None)
            except StoreUnavailable as exc:
                failures += 1
                if failures > self._reconnect_attempts:
                    raise
                await self._backoff(stream, failures, exc)
                continue
            failures = 0
            if not raw:
                if follow:
                    continue
                return
            for entry_id, fields in raw:
                for item_id, entry in _items_after(stream, entry_id, fields, skip):
                    cursor = item_id
                    if entry is None or (run_id is not None and not _of_run(entry, run_id)):
                        continue
                    yield entry
                    if tree is not None:
                        tree.add(entry)
                    if stop_at_terminal and (
                        tree.done if tree is not None else _is_terminal(entry)
                    ):
                        return
                cursor = entry_id

    async def last_id(self, session_id: str) -> str:
        """The id of the session's newest entry ("0-0" if it has none)."""
        return await self._last_id(self._keys.events(session_id))

    async def _backoff(self, stream: str, failures: int, exc: StoreError) -> None:
        delay = min(1.0, self._reconnect_backoff_s * 2 ** (failures - 1))
        log.warning("stream.reconnect", stream=stream, attempt=failures, error=str(exc))
        await asyncio.sleep(delay)

    async def _last_id(self, stream: str) -> str:
        async with translate_errors("read stream end"):
            last = await self._redis.xrevrange(stream, count=1)
        return text(last[0][0]) if last else "0-0"

    async def _xread(
        self, stream: str, after: str, count: int, block_ms: int | None
    ) -> list[tuple[str, Mapping[Any, Any]]]:
        client = self._redis
        if block_ms is not None:
            client = self._blocking
            if self._max_block_ms is not None:
                block_ms = min(block_ms, self._max_block_ms)
        async with translate_errors("stream read"):
            reply = await client.xread({stream: after}, count=count, block=block_ms)
        return [(text(entry_id), fields) for entry_id, fields in _entries_of(reply)]

    @staticmethod
    def _decode_page(
        stream: str, raw: list[tuple[str, Mapping[Any, Any]]], skip: tuple[str, int] | None
    ) -> StreamPage:
        entries = [
            entry
            for entry_id, fields in raw
            for _item_id, entry in _items_after(stream, entry_id, fields, skip)
            if entry is not None
        ]
        return StreamPage(entries=entries, last_id=raw[-1][0] if raw else None)


def item_id(entry_id: str, index: int, count: int) -> str:
    """The id of item `index` of an entry of `count` items: "<entry id>.<index>", but the
    last item's is the plain entry id (so resuming after it resumes after the entry)."""
    return entry_id if index == count - 1 else f"{entry_id}.{index}"


def split_item_id(item_id_: str) -> tuple[str, int | None]:
    """The entry id and item index of an item id (index None: a plain entry id, the
    entry's last item). A suffix that is not a number is left in the entry id. The entry
    id of an item id is given as Redis spells it ("0012-03.1" is item 1 of "12-3"), so it
    compares equal to the ids Redis returns."""
    entry_id, dot, index = item_id_.partition(".")
    if not dot or not ascii_digits(index):
        return item_id_, None
    ms, dash, seq = entry_id.partition("-")
    if dash and ascii_digits(ms) and ascii_digits(seq):
        entry_id = f"{int(ms)}-{int(seq)}"
    return entry_id, int(index)


def _resume_point(cursor: str) -> tuple[str, tuple[str, int] | None]:
    """Where a read after `cursor` starts (an exclusive stream id for XREAD) and which
    items of its first entry it skips: after item i of entry E, the read takes E again
    (from the id just before it) and skips E's items up to i."""
    entry_id, index = split_item_id(cursor)
    if index is None:
        return cursor, None
    ms, dash, seq = entry_id.partition("-")
    if not dash or not ascii_digits(ms) or not ascii_digits(seq):
        return cursor, None  # not a stream id: Redis says so
    if int(seq) > 0:
        before = f"{ms}-{int(seq) - 1}"
    elif int(ms) > 0:
        before = f"{int(ms) - 1}-18446744073709551615"
    else:
        before = "0-0"
    return before, (entry_id, index)


def decode_entry(entry_id: str, fields: Mapping[Any, Any]) -> StreamEntry:
    """Decode and validate one raw stream entry of one output (v1); `PayloadError` says
    what is wrong (an entry of several outputs: `decode_items`)."""
    named = _named(entry_id, fields)
    version = text(_need(named, "v", entry_id))
    if version != WIRE_VERSION:
        raise PayloadError(f"stream entry {entry_id} has unsupported version {version!r}")
    return _decode_v1(entry_id, named)


def decode_items(entry_id: str, fields: Mapping[Any, Any]) -> list[StreamEntry | PayloadError]:
    """Decode one raw stream entry of either version into its outputs, in order, each with
    its item id (`item_id`); an item that does not decode is its `PayloadError` in the
    list, the others still decoded. Raises `PayloadError` for an entry that is malformed
    as a whole (no version, an unknown one, a bad item count)."""
    return [item for _id, item in _decode_from(entry_id, fields)]


def decode_run_items(
    entry_id: str, fields: Mapping[Any, Any], run_id: str, first: int = 0, last: int | None = None
) -> list[tuple[str, StreamEntry | PayloadError]]:
    """(item id, output or its `PayloadError`) for the items of a v2 entry from index
    `first` up to `last` (None: all) whose run is `run_id`: the others are not decoded
    (their run field is all that is read). Raises `PayloadError` for an entry that is
    malformed as a whole."""
    named = _named(entry_id, fields)
    version = text(_need(named, "v", entry_id))
    if version != MULTI_WIRE_VERSION:
        raise PayloadError(f"stream entry {entry_id} is not of version {MULTI_WIRE_VERSION}")
    return _v2_items(entry_id, named, first, last, run_id)


def _decode_from(
    entry_id: str, fields: Mapping[Any, Any], first: int = 0
) -> list[tuple[str, StreamEntry | PayloadError]]:
    """(item id, output or its `PayloadError`) for the items of an entry of either
    version from index `first`; `PayloadError` for an entry malformed as a whole."""
    named = _named(entry_id, fields)
    version = text(_need(named, "v", entry_id))
    if version == WIRE_VERSION:
        if first > 0:
            return []
        try:
            return [(entry_id, _decode_v1(entry_id, named))]
        except PayloadError as exc:
            return [(entry_id, exc)]
    if version != MULTI_WIRE_VERSION:
        raise PayloadError(f"stream entry {entry_id} has unsupported version {version!r}")
    return _v2_items(entry_id, named, first)


def _v2_items(
    entry_id: str,
    named: Mapping[str, Any],
    first: int = 0,
    last: int | None = None,
    run_id: str | None = None,
) -> list[tuple[str, StreamEntry | PayloadError]]:
    """The items of a v2 entry from `first` up to `last`, only `run_id`'s if given (the
    others' run field is all that is read), each decoded or its `PayloadError`."""
    count = item_count(entry_id, named)
    stop = count if last is None else min(count, last + 1)
    found: list[tuple[str, StreamEntry | PayloadError]] = []
    for index in range(first, stop):
        if run_id is not None:
            run = named.get(f"r{index}")
            if run is None or text(run) != run_id:
                continue
        id_ = item_id(entry_id, index, count)
        try:
            found.append((id_, _decode_item_at(id_, named, index)))
        except PayloadError as exc:
            found.append((id_, exc))
    return found


def item_count(entry_id: str, named: Mapping[str, Any]) -> int:
    """The item count ("n") of a v2 entry (fields by name): 1 to `MAX_ITEMS_PER_ENTRY`."""
    raw = text(_need(named, "n", entry_id))
    count = int(raw) if ascii_digits(raw) and len(raw) < 4 else 0
    # Items missing fields (a count too high) fail one by one, as they are decoded.
    if not 1 <= count <= MAX_ITEMS_PER_ENTRY:
        raise PayloadError(f"stream entry {entry_id} has a bad item count {raw!r}")
    return count


def decode_item(id_: str, kind: str, run_id: str, root: str | None, data: Any) -> StreamEntry:
    """One output of a stream entry from its fields (root None: the run is its own)."""
    if kind not in _KINDS:
        raise PayloadError(f"stream entry {id_} has unknown kind {kind!r}")
    root_id = run_id if root is None else root
    try:
        if kind == "status":
            status = StatusEntry.model_validate_json(data)
            return StreamEntry(
                id=id_, run_id=run_id, root_run_id=root_id, kind="status", status=status
            )
        output = output_from_json(data)
    except ValidationError as exc:
        raise PayloadError(f"stream entry {id_} has invalid {kind} data") from exc
    if output.type != kind:
        raise PayloadError(f"stream entry {id_} is kind {kind!r} but holds {output.type!r}")
    output.stream_id = id_
    return StreamEntry(id=id_, run_id=run_id, root_run_id=root_id, kind=output.type, output=output)


def _named(entry_id: str, fields: Mapping[Any, Any]) -> dict[str, Any]:
    try:
        return {text(k): v for k, v in fields.items()}
    except (AttributeError, TypeError) as exc:
        raise PayloadError(f"stream entry {entry_id} has malformed fields") from exc


def _need(named: Mapping[str, Any], name: str, id_: str) -> Any:
    try:
        return named[name]
    except KeyError:
        raise PayloadError(f"stream entry {id_} lacks field {name!r}") from None


def _decode_v1(entry_id: str, named: Mapping[str, Any]) -> StreamEntry:
    kind = text(_need(named, "kind", entry_id))
    run_id = text(_need(named, "run", entry_id))
    data = _need(named, "data", entry_id)
    root = text(named["root"]) if "root" in named else None
    return decode_item(entry_id, kind, run_id, root, data)


def _decode_item_at(id_: str, named: Mapping[str, Any], index: int) -> StreamEntry:
    kind = text(_need(named, f"k{index}", id_))
    run_id = text(_need(named, f"r{index}", id_))
    data = _need(named, f"d{index}", id_)
    root = named.get(f"o{index}")
    return decode_item(id_, kind, run_id, None if root is None else text(root), data)


def _items_after(
    stream: str, entry_id: str, fields: Mapping[Any, Any], skip: tuple[str, int] | None
) -> list[tuple[str, StreamEntry | None]]:
    """(item id, output) for each item of a raw entry, None for one that does not decode
    (logged); those up to `skip`'s index when this is `skip`'s entry are left out."""
    mine = skip is not None and skip[0] == entry_id
    try:
        decoded = _decode_from(entry_id, fields, skip[1] + 1 if skip is not None and mine else 0)
    except PayloadError as exc:
        log.warning("stream.malformed_entry", stream=stream, entry_id=entry_id, error=str(exc))
        return [] if mine else [(entry_id, None)]
    items: list[tuple[str, StreamEntry | None]] = []
    for id_, item in decoded:
        if isinstance(item, PayloadError):
            log.warning("stream.malformed_entry", stream=stream, entry_id=id_, error=str(item))
            items.append((id_, None))
        else:
            items.append((id_, item))
    return items


def _entries_of(reply: Any) -> Iterable[tuple[Any, Mapping[Any, Any]]]:
    """The (id, fields) pairs of a RESP2 XREAD reply ([[stream, [(id, fields), ...]], ...])."""
    if not reply:
        return []
    return [(entry_id, fields or {}) for _name, entries in reply for entry_id, fields in entries]


def _of_run(entry: StreamEntry, run_id: str) -> bool:
    """The entry is the run's own, or (for a root run) one of its forks'."""
    return entry.run_id == run_id or entry.root_run_id == run_id


def _is_terminal(entry: StreamEntry) -> bool:
    return entry.status is not None and entry.status.status.terminal
