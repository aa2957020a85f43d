"""Run records, run leases and worker heartbeats in Redis.

RunStore        RunRecord JSON per run, plus a time index and one index per status,
                changed together in one MULTI/EXEC (conditional `transition`s included)
LeaseTable      "attempt N of run R is alive on worker W until T": renewed by the worker,
                reaped by whoever sees it expire (exactly one reaper wins), fenced so a
                replaced attempt learns it has been replaced
WorkerRegistry  worker heartbeats with their info, for dashboards and reapers
"""

from __future__ import annotations

import asyncio
import builtins
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any

import structlog
from pydantic import ValidationError
from redis.commands.core import AsyncScript

from orchestrator.errors import PayloadError, RunNotFound, StoreError
from orchestrator.keys import Keys
from orchestrator.runs import RunRecord, RunResultView, RunStatus, RunStatusView, StatusEntry
from orchestrator.store._codec import dump_json, load_json, parse_int, resolve, text
from orchestrator.store.abort import decode_reason
from orchestrator.store.connection import (
    Pipeline,
    Redis,
    begin,
    optimistic,
    run_script,
    run_scripts,
    translate_errors,
)
from orchestrator.store.streams import (
    ADD_ENTRY_FUNCTION_LUA,
    IDLE_TTL_S,
    PUBLISH_FUNCTION_LUA,
    TAKE_OVER_FUNCTION_LUA,
    LastBatch,
    TakenOver,
    taken_over,
)

__all__ = [
    "SESSION_WINDOW_MAX_MS",
    "EndWrites",
    "Ended",
    "LeaseTable",
    "RunStore",
    "Start",
    "Started",
    "WorkerRegistry",
]

log = structlog.get_logger(__name__)

_FIXED_FIELDS = frozenset({"v", "run_id"})


def _now_ms() -> float:
    return time.time() * 1000.0


def _score(ms: float) -> str:
    """A deadline as a sorted set's score: whole milliseconds. A small sorted set (a
    worker's lease deadlines) is a listpack, which keeps a whole score as an integer but
    a fractional one as text it parses again at every insert: ZADD into 100 members costs
    about 3x as much with fractional scores (8-15 vs 25-44 µs, Redis 7.0). The indexes
    runs are listed by keep their exact submission times (runs of one millisecond, a
    fan-out's forks, list in the order they were submitted)."""
    return str(math.floor(ms))


# Write a run record if it is still what the caller read (compare-and-set on the raw
# JSON; "" = only if there is none), with its indexes and, optionally, its expiry: one
# atomic script instead of WATCH/GET/MULTI/EXEC. Reply: 1 written, 0 conflict. The time
# index is written once, at creation (its score, submitted_at, never changes); a status
# index only when the status changes (the record's status and its index move together).
# KEYS: record, time index, old status index, new status index, expiring index
# ARGV: expected raw ("" = absent), new raw, run id, score, ttl ms ("" = keep), now ms
_CAS_LUA = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if current then return 0 end
elseif current ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
if ARGV[1] == '' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
elseif KEYS[3] ~= KEYS[4] then
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
end
if ARGV[5] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('ZADD', KEYS[5], tonumber(ARGV[6]) + tonumber(ARGV[5]), ARGV[3])
end
return 1
"""
_CAS_RETRIES = 100
# `RunStore.mark_recreated` for one run, only while it has no record (a concurrent
# re-creator's record and the life it started are left alone).
# KEYS: record, lease owner, checkpoint, write fence; ARGV: fence ttl s. Reply: 1 marked.
_RECREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SET', KEYS[4], '0', 'EX', ARGV[1])
return 1
"""
# Create records that do not exist yet, several in one script (a batch of forks): one
# SET NX each, then one ZADD on the time index and one on the status index for those
# created. KEYS: time index, status index, record...; ARGV: (run id, raw, score) per record.
# Replies 1 (created) or 0 (it existed) per record.
_CREATE_MANY_LUA = """
local created = {}
local scored = {}
for i = 3, #KEYS do
  local a = (i - 3) * 3
  if redis.call('SET', KEYS[i], ARGV[a + 2], 'NX') then
    created[#created + 1] = 1
    scored[#scored + 1] = ARGV[a + 3]
    scored[#scored + 1] = ARGV[a + 1]
  else
    created[#created + 1] = 0
  end
end
if #scored > 0 then
  redis.call('ZADD', KEYS[1], unpack(scored))
  redis.call('ZADD', KEYS[2], unpack(scored))
end
return created
"""
# Records per _CREATE_MANY_LUA call (Lua's unpack is bounded by its stack).
_CREATE_CHUNK = 256
# Park a running run until its forks have ended, atomically with their ends: refused (0)
# if the record changed since it was read, or if one of the forks it is to wait for has
# ended meanwhile (its id is in a terminal status index: one ZMSCORE per index and
# thousand forks); else the record goes to WAITING and the awaited set holds the forks.
# One script: no WATCH on a thousand forks' records that keep changing while they end.
# KEYS: record, running index, waiting index, awaited set, terminal indexes...
# ARGV: expected raw, new raw, run id, score, awaited ttl, n terminal, fork ids...
_SUSPEND_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local nterm = tonumber(ARGV[6])
for t = 1, nterm do
  for first = 7, #ARGV, 1000 do
    local last = math.min(first + 999, #ARGV)
    local scores = redis.call('ZMSCORE', KEYS[4 + t], unpack(ARGV, first, last))
    for i = 1, #scores do
      if scores[i] then return 0 end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('DEL', KEYS[4])
for first = 7, #ARGV, 1000 do
  redis.call('SADD', KEYS[4], unpack(ARGV, first, math.min(first + 999, #ARGV)))
end
redis.call('EXPIRE', KEYS[4], ARGV[5])
return 1
"""
# The checks and writes of a job's start once its record is settled, shared by
# `_START_LUA` and the start a turn's pick makes (`PICK_START_LUA`): refuse if the lease
# owner record is corrupt (-1) or a later attempt owns the lease (3); take over the run's
# writes (`take_over`, with `fence_ttl` ~= ''; refused: 4, and the take-over's reply);
# then write the record, move it from `old_index` to `running` (if they differ), take
# the lease and put it in the deadlines. Returns the code (1 started) and the take-over.
# `first`: the record is attempt 1 of a run that never started (queued, no started_at).
# Nothing but a start of the run writes its fence, its checkpoint, its event_seq in the
# seqs or its lease owner (after the start, its attempt's publisher, lease keeper and
# end), and every start writes `started_at`: so no attempt has written any of them, and
# none can have a newer attempt (only a reaper makes one, moving the record on to
# attempt 2 first). A run id may still have had an earlier life whose events are in the
# session's stream: a re-run spawn whose fork's record expired creates it again (it gets
# a fence first, `RunStore.mark_recreated`, but a worker of an older version gives none),
# and a session's fork numbers count up again once its fork table expired. So the
# take-over reads only the run's last event_seq (its events number on): the fence is made
# with one SET NX, which finds none (if it finds one, the whole take-over runs, as for
# any start), and no checkpoint is read (an ended life left none to resume). The lease
# owner is still read: a record of another attempt there (not this run's: untrusted
# contents) refuses the start as it always did.
START_FUNCTION_LUA = """
local function start_run(record, old_index, running, owner, deadlines, fence_key, seqs,
    checkpoint, new_raw, run_id, score, attempt_arg, worker, deadline, fence_ttl, first)
  local f = redis.call('HMGET', owner, 'attempt', 'fence')
  local attempt = tonumber(attempt_arg)
  local held = tonumber(f[1])
  local fence = tonumber(f[2])
  if (f[1] and not held) or (f[2] and not fence) then return -1 end
  if (fence and attempt < fence) or (held and held > attempt) then return 3 end
  local taken = nil
  if fence_ttl ~= '' then
    if first and not (f[1] or f[2])
        and redis.call('SET', fence_key, attempt_arg, 'EX', fence_ttl, 'NX') then
      taken = {1, redis.call('HGET', seqs, run_id) or '', '', 0}
    else
      taken = take_over(fence_key, seqs, checkpoint, attempt_arg, fence_ttl, run_id)
      if taken[1] == 0 then return 4, taken end
    end
  end
  redis.call('SET', record, new_raw, 'KEEPTTL')
  if old_index ~= running then
    redis.call('ZREM', old_index, run_id)
    redis.call('ZADD', running, score, run_id)
  end
  redis.call('HSET', owner, 'attempt', attempt_arg, 'worker', worker, 'state', 'held')
  -- Only a release, a claim or an end gives the owner record a TTL, and each of them also
  -- sets its fence: with neither attempt nor fence, it has none to clear.
  if f[1] or f[2] then redis.call('PERSIST', owner) end
  redis.call('ZADD', deadlines, deadline, run_id)
  return 1, taken
end
"""
# The start of a job in one round trip: read the run's abort flags and, if the record is
# still what the caller expects, move it to RUNNING and take the attempt's lease (the
# checks of `_RENEW_LUA`), all or nothing; with ARGV[9], also take over the run's writes
# for the attempt (`EventPublisher.take_over`, the same Lua function), after the checks
# and before any write, so a refused take-over starts nothing. Redis Cluster is not a
# target: scripts already mix hash tags (the job queue's), so the {runs}, {leases} and
# {session} keys meet here.
# KEYS: record, its status index as expected, running index, lease owner, lease
#       deadlines, the run tree's abort flag, the session's abort flag, the run's write
#       fence, the session's seqs, the run's checkpoint
# ARGV: expected raw ("" = none: only read), new raw, run id, score, attempt, worker id,
#       lease deadline ms, "1" = refuse if an abort flag is set (a run never started),
#       write fence ttl s ("" = no take-over)
# Reply: {code, record raw, tree flag set, tree flag, session flag set, session flag,
#         [take-over reply]};
# code 1 started (with the take-over's {1, seq, checkpoint, found} when asked), 0 the
# record is not the expected one (raw: what it is, "" = none), 2 aborted before it
# started, 3 the lease belongs to a later attempt, 4 a later attempt owns the run's writes
# or saved its checkpoint (the take-over's {0, newer}), -1 corrupt lease
_START_LUA = (
    TAKE_OVER_FUNCTION_LUA
    + START_FUNCTION_LUA
    + """
local flags = redis.call('MGET', KEYS[6], KEYS[7])
local function reply(code, raw, taken)
  return {code, raw, flags[1] and 1 or 0, flags[1] or '', flags[2] and 1 or 0, flags[2] or '',
    taken}
end
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '' or current ~= ARGV[1] then return reply(0, current or '') end
if ARGV[8] == '1' and (flags[1] or flags[2]) then return reply(2, '') end
local code, taken = start_run(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[8], KEYS[9],
  KEYS[10], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[9])
return reply(code, '', taken)
"""
)
# The start of a turn made by its job's pick, in the pick's script (`workers.arq_jobs`),
# when the pick can prove it is the start the job's `RunStore.start` would make: the
# run's record is in the form this version writes (`model_dump_json`: its first fields,
# up to `worker_id`, in their order with plain values, and `"fork"` and an empty
# `"waiting_for"` last), it expects this attempt and segment (`_current`: not ended,
# same attempt; the same segment, or the next while waiting), the job is a `run_turn`
# whose payload begins with this run id and the record's session id, and the pick
# counted its first try (arq would refuse a later one: max_tries 1). Then the record is
# that record with the fields `_started` changes spliced in (status, segment,
# started_at if it never started, worker_id; `waiting_for` stays empty), and the rest
# is `start_run`'s. The session's key names are the record's session id put into the
# templates Python made with `Keys` (the root run id too: the run id less its
# ".fork_<n>" when the record has a fork), so the keys a start writes are not in KEYS:
# Redis Cluster is not a target (see `_START_LUA`). Python checks the payload afterwards
# against what was started (`PickedStart.matches`), and gives the run back if it differs.
# Anything else, and any failure, starts nothing here: the job starts as it always did.
# Arguments: the job's bytes, the record read, the record, lease owner, lease deadlines
# and running index keys, and the ARGV index of the start's arguments (in this order):
#   run id, attempt, segment, worker id, worker id as JSON, lease deadline ms, now (s,
#   JSON), the job's head up to its session id's first quote, the key templates of the
#   status index (\0 = the status), the session's abort flag, the run tree's abort flag
#   (\1 = the root run id), the run's write fence, the session's seqs and the run's
#   checkpoint (\0 = the session id), write fence ttl s.
# Returns {1, record raw, tree flag set, tree flag, session flag set, session flag,
# session id, root run id, take-over reply} when it started the run, else {code} (0 not
# this script's to start, else `start_run`'s refusal; nothing written but what a refused
# take-over puts back).
_PICK_START_FUNCTION_LUA = r"""
local RECORD_HEAD = '^([^"\\]+)","agent":"[^"\\]*","status":"()(%l+)()","attempt":(%d+),' ..
  '"max_attempts":%d+,"segment":()(%d+)(),"submitted_at":([%d%.eE+%-]+),"started_at":()' ..
  '([%w%.+%-]+)(),"finished_at":[%w%.+%-]+,"worker_id":()'
local ROOT_TAIL = ',"fork":null,"waiting_for":[]}'
-- A JSON number Python reads as a finite float (not hex, inf or nan, which Lua would).
local function json_number(text)
  if not (string.match(text, '^%-?%d+$') or string.match(text, '^%-?%d+%.%d+$')
      or string.match(text, '^%-?%d+%.?%d*[eE][%+%-]?%d+$')) then return nil end
  local value = tonumber(text)
  if not value or value ~= value or value == math.huge or value == -math.huge then
    return nil
  end
  return value
end
local FORK_TAIL = '},"waiting_for":[]}'
local function fill(template, value, root)
  if root then
    local at = string.find(template, '\1', 1, true)
    template = string.sub(template, 1, at - 1) .. root .. string.sub(template, at + 1)
  end
  local at = string.find(template, '\0', 1, true)
  return string.sub(template, 1, at - 1) .. value .. string.sub(template, at + 1)
end
local function start_picked(job, raw, record, owner, deadlines, running, a, ARGV)
  local run_id = ARGV[a]
  local head = '{"v":1,"run_id":"' .. run_id .. '","session_id":"'
  if string.sub(raw, 1, #head) ~= head then return {0} end
  local sid, s1, status, s2, attempt, g1, segment, g2, submitted, t1, started, t2, w1 =
    string.match(raw, RECORD_HEAD, #head + 1)
  if not sid or #sid > 200 or string.find(sid, '[{}%s%c]') then return {0} end
  if attempt ~= ARGV[a + 1] or tostring(tonumber(segment)) ~= segment then return {0} end
  if status == 'waiting' then
    if tonumber(segment) + 1 ~= tonumber(ARGV[a + 2]) then return {0} end
  elseif (status ~= 'queued' and status ~= 'running') or segment ~= ARGV[a + 2] then
    return {0}
  end
  local w2 = w1 + 4
  if string.sub(raw, w1, w1 + 3) ~= 'null' then w2 = string.match(raw, '^"[^"\\]*"()', w1) end
  if not w2 or string.sub(raw, w2, w2 + 11) ~= ',"response":' then return {0} end
  local root = run_id
  if string.sub(raw, -#ROOT_TAIL) ~= ROOT_TAIL then
    if string.sub(raw, -#FORK_TAIL) ~= FORK_TAIL then return {0} end
    root = string.match(run_id, '^(.+)%.fork_%d+$')
    if not root then return {0} end
  end
  local job_head = ARGV[a + 7] .. sid .. '",'
  if string.sub(job, 1, #job_head) ~= job_head then return {0} end
  local score = json_number(submitted)
  if not score or (started ~= 'null' and not json_number(started)) then return {0} end
  -- The whole record must be JSON whose fields are the ones matched above: a record
  -- with a field twice (its reader keeps the last) or not JSON past them is not started
  -- here (the job's own start reads it whole and says what is wrong).
  local ok, doc = pcall(cjson.decode, raw)
  if not ok or type(doc) ~= 'table' or doc.run_id ~= run_id or doc.session_id ~= sid
      or doc.status ~= status or doc.attempt ~= tonumber(attempt)
      or doc.segment ~= tonumber(segment) or type(doc.waiting_for) ~= 'table'
      or next(doc.waiting_for) ~= nil
      or (started == 'null' and doc.started_at ~= cjson.null)
      or (started ~= 'null' and doc.started_at ~= tonumber(started)) then
    return {0}
  end
  local flags = redis.call('MGET', fill(ARGV[a + 10], sid, root), fill(ARGV[a + 9], sid))
  if started == 'null' and (flags[1] or flags[2]) then return {2} end
  local first = status == 'queued' and attempt == '1' and started == 'null'
  if started == 'null' or tonumber(started) == 0 then started = ARGV[a + 6] end
  local new = string.sub(raw, 1, s1 - 1) .. 'running' .. string.sub(raw, s2, g1 - 1) ..
    ARGV[a + 2] .. string.sub(raw, g2, t1 - 1) .. started .. string.sub(raw, t2, w1 - 1) ..
    ARGV[a + 4] .. string.sub(raw, w2)
  local code, taken = start_run(record, fill(ARGV[a + 8], status), running, owner, deadlines,
    fill(ARGV[a + 11], sid), fill(ARGV[a + 12], sid), fill(ARGV[a + 13], sid), new, run_id,
    string.format('%.17g', score * 1000), ARGV[a + 1], ARGV[a + 3], ARGV[a + 5], ARGV[a + 14],
    first)
  if code ~= 1 then return {code} end
  return {1, new, flags[1] and 1 or 0, flags[1] or '', flags[2] and 1 or 0, flags[2] or '',
    sid, root, taken}
end
"""
# The Lua the pick's script includes to start a turn: `start_picked` above and what it
# calls. A pick calls it under `pcall`: a failure (a key of the wrong type) starts
# nothing more than `_START_LUA` would have before failing the same way.
PICK_START_LUA = TAKE_OVER_FUNCTION_LUA + START_FUNCTION_LUA + _PICK_START_FUNCTION_LUA
# The placeholders of the key templates `start_picked` fills in (no id contains them).
_SESSION_MARK = "\x00"
_ROOT_MARK = "\x01"
# The characters of a run id the pick's start handles (written as is in JSON, and in a
# Lua pattern's subject only): printable ASCII but space, quote, backslash and braces.
_PLAIN_ID = re.compile(r"[!#-\[\]-z|~]{1,200}")


def pick_start_args(
    keys: Keys,
    run_id: str,
    *,
    attempt: int,
    segment: int,
    worker_id: str,
    lease_ttl_s: float,
    take_over_ttl_s: int,
    job_head: str,
) -> tuple[list[str], list[str]] | None:
    """The KEYS (lease owner, deadlines, running index: after the record the pick reads)
    and the ARGV of the start `PICK_START_LUA` makes for attempt `attempt` (segment
    `segment`) of `run_id` on `worker_id`, as `RunStore.start(take_over_ttl_s=)` with
    `_current` as its check; None for a run id it does not handle (the start is then
    made on its own). `job_head`: how the job's payload begins, up to its session id."""
    if _PLAIN_ID.fullmatch(run_id) is None:
        return None
    session, root = _SESSION_MARK, _ROOT_MARK
    args = [
        run_id,
        str(attempt),
        str(segment),
        worker_id,
        json.dumps(worker_id),
        _score(_now_ms() + lease_ttl_s * 1000.0),
        repr(time.time()),
        job_head,
        keys.runs_by_status(session),
        keys.abort(session),
        keys.run_abort(session, root),
        keys.run_fence(session, run_id),
        keys.seqs(session),
        keys.checkpoint(session, run_id),
        str(take_over_ttl_s),
    ]
    return [keys.lease(run_id), keys.leases(), keys.runs_by_status(RunStatus.RUNNING)], args


@dataclass(slots=True)
class PickedStart:
    """What the pick of a turn's job replied for the start it tried (`PICK_START_LUA`),
    for the job to take (`used`) before anything else: the run id, attempt and segment
    its job id named, the reply, and when the pick was sent (loop time)."""

    run_id: str
    attempt: int
    segment: int
    reply: Any
    at: float
    used: bool = False

    @property
    def started(self) -> bool:
        """The pick started the run (RUNNING, its lease and writes this attempt's)."""
        return (
            isinstance(self.reply, list | tuple) and len(self.reply) == 9 and (self.reply[0] == 1)
        )

    def matches(
        self, run_id: str, attempt: int, segment: int, session_id: str, root_run_id: str
    ) -> bool:
        """The pick started exactly the start a job for these would make."""
        return (
            self.started
            and (self.run_id, self.attempt, self.segment) == (run_id, attempt, segment)
            and (text(self.reply[6]), text(self.reply[7])) == (session_id, root_run_id)
        )

    def start(self, take_over_ttl_s: int) -> Start:
        """The `Start` the pick made (`started` only); `PayloadError` if the record it
        wrote does not decode (it was corrupt past the fields the pick reads)."""
        reply = self.reply
        raw = reply[1] if isinstance(reply[1], bytes) else str(reply[1]).encode()
        record = _decode_record(self.run_id, raw)
        if (record.status, record.attempt, record.segment) != (
            RunStatus.RUNNING,
            self.attempt,
            self.segment,
        ):
            raise PayloadError(
                f"run record {self.run_id!r} as its pick started it is "
                f"{record.status.value} attempt {record.attempt} segment {record.segment}"
            )
        _remember(self.run_id, raw, record)
        taken = taken_over(reply[8], self.run_id, take_over_ttl_s, self.at)
        return Start(Started.STARTED, record, _flag_reason(reply), taken)


# The end of a run in one round trip: its terminal record (compare-and-set, as
# `_CAS_LUA`, with its retention clock) and everything that follows from it: the
# checkpoint's state dropped (its fence kept), the attempt's lease released (as
# `_RELEASE_LUA`), the write fence's retention, the session owner's and run index's
# retention pushed back when they would expire before the stream (not on every run's
# end; with them, the session's fork counter pushed past the record's and the stream's
# expiry), the terminal status entry in the session stream (`add_entry`, marked as the
# publisher "end:<run>" would mark it: once, however often the end is repeated; the
# stream's retention starts there, pushed back unless an end did so within the refresh
# window: `_session_window_ms`), the announcement that wakes `Run.result()`, and, a
# fork, its parent's awaited set (SREM, then SCARD: exactly one fork's end sees it
# emptied), with the parent's record when this was the last fork it awaited. A reader
# woken by the terminal entry (or the announcement) finds all of it done: one script.
# With a publisher's last batch (ARGV after the rider's, `publish`'s arguments), the batch
# goes first, as if the publisher had sent it just before: its fence refuses the whole end
# (nothing written), else its entries precede the terminal entry, and it is written
# (once: its marker) even when the record is not the expected one.
# KEYS: record, old status index, new status index, expiring index, checkpoint, write
#       fence, lease owner, lease deadlines, session owner, session runs, parent's
#       awaited set, parent's record, session stream, session seqs, session publishers,
#       session fork counter
# ARGV: expected raw, new raw ("" = the record is terminal already: only the rest), run
#       id, score, run ttl ms, now ms, stream ttl s, session ttl ms, session ttl ms to set,
#       lease attempt to release ("" = none), its fence, lease fence ttl s, drop the
#       checkpoint ("1"), checkpoint fence ttl s, run-ends channel (and, + ":records",
#       `Keys.run_ended_records`), a fork ("1"),
#       terminal status entry ("" = none), its root ("" = the run), stream maxlen,
#       session refresh window ms, "1" = the expected record is of the lease attempt
#       released, the rider's commands (`_rider_args`), [the last batch: `publish`'s
#       arguments]
# Reply: {0, record raw ("" = none)} not the expected record, nothing written but the
# batch; {-1, newer attempt} the batch's fence refused it, nothing written; {1} ended;
# {1, parent raw} ended, and emptied the waiting parent's awaited set
_END_LUA = (
    ADD_ENTRY_FUNCTION_LUA
    + PUBLISH_FUNCTION_LUA
    + """
-- ARGV[22]: how many ARGV the rider's commands take (ARGV[23..]: each its argument
-- count, then its arguments); the last batch's, if any, follow them.
local base = 22 + tonumber(ARGV[22])
local batch = false
-- The batch's fence check reads the write fence and gives it its retention (GETEX).
local fenced = false
if #ARGV > base then
  local checked = publish_check(KEYS[14], KEYS[15], KEYS[6], KEYS[5], base, ARGV[7])
  if checked[1] == 0 then return {-1, checked[2]} end
  batch = checked[1] == 1
  fenced = checked.fenced == true
end
local fresh = ARGV[2] ~= ''
if fresh then
  local current = redis.call('GET', KEYS[1])
  if current ~= ARGV[1] then
    -- Re-queued meanwhile: the batch is written (the next attempt resumes after it).
    -- Ended by someone else (its terminal marker): its terminal entry stays the last.
    if batch and not (redis.call('HGET', KEYS[14], 'batch:end:' .. ARGV[3])
        or redis.call('HGET', KEYS[15], 'end:' .. ARGV[3])) then
      publish_write(KEYS[13], KEYS[14], KEYS[6], KEYS[5], base, {}, true)
    end
    -- Re-queued (a live run's fence: the batch's TTL) or ended elsewhere (the stream's
    -- retention): the longer, so the fence never expires before its stream.
    if fenced then
      redis.call('EXPIRE', KEYS[6], math.max(tonumber(ARGV[7]), tonumber(ARGV[base + 7])))
    end
    return {0, current or ''}
  end
  -- The record and its retention clock in one command (SET KEEPTTL + PEXPIRE).
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
  if KEYS[2] ~= KEYS[3] then
    redis.call('ZREM', KEYS[2], ARGV[3])
    redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
  end
else
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
redis.call('ZADD', KEYS[4], tonumber(ARGV[6]) + tonumber(ARGV[5]), ARGV[3])
if ARGV[10] ~= '' then
  -- The lease is the attempt's to release if it holds it. A record just moved on from
  -- the attempt's own (ARGV[21]: its attempt is the one released) says so already: a
  -- lease's attempt is written by a start, with its record, and by that attempt's own
  -- renewals, and a record's attempt only grows: no later attempt has started.
  local held = (fresh and ARGV[21] == '1') or nil
  if not held then
    local attempt = redis.call('HGET', KEYS[7], 'attempt')
    held = attempt and tonumber(attempt) == tonumber(ARGV[10])
  end
  if held then
    redis.call('ZREM', KEYS[8], ARGV[3])
    redis.call('HSET', KEYS[7], 'fence', ARGV[11], 'state', 'released')
    redis.call('EXPIRE', KEYS[7], ARGV[12])
  end
end
if not fenced then redis.call('EXPIRE', KEYS[6], ARGV[7]) end
local marker = 'batch:end:' .. ARGV[3]
local done = ARGV[17] == ''
-- A fresh end has just made the record terminal, and a terminal entry is only ever
-- written once it is (here, or by an older version's separate script after it): none
-- can exist yet, so only a repeated end reads the marker (and where older versions kept
-- it).
if not done and not fresh then
  done = redis.call('HGET', KEYS[14], marker) or redis.call('HGET', KEYS[15], 'end:' .. ARGV[3])
end
-- The batch's entries, then the terminal entry (in the batch's entry when it allows
-- several items); the end's marker in the batch's HSET, and the batch's checkpoint state
-- not written if the end drops it.
if batch then
  publish_write(KEYS[13], KEYS[14], KEYS[6], KEYS[5], base, done and {} or {marker, '1'},
    ARGV[13] ~= '1', (not done) and {'status', ARGV[3], ARGV[17], ARGV[18]} or nil)
elseif not done then
  redis.call('HSET', KEYS[14], marker, '1')
  add_entry(KEYS[13], ARGV[19], 'status', ARGV[3], ARGV[17], ARGV[18])
end
-- After the batch: its first checkpoint may have made the key just now. Dropped or not
-- (an end by other than its attempt: a reaper giving up, an abort of the queued run), a
-- terminal run's checkpoint expires: kept without a TTL only while its run is live.
if ARGV[13] == '1' then redis.call('HDEL', KEYS[5], 'state') end
redis.call('EXPIRE', KEYS[5], ARGV[14])
-- The session's retention: the stream's and seqs' TTLs, and the owner and run index
-- outliving them. Left alone when the stream's TTL says an end set them less than
-- ARGV[20] ms ago (a fan-out's ends: one of them in that time, not each): its TTL is at
-- most the retention and at least the retention less ARGV[20] (a publisher's idle TTL
-- is far from it, else ARGV[20] is 0: `_session_window_ms`; a new stream has none), and
-- that end saw the owner outlive it.
local session = true
if ARGV[17] ~= '' then
  local left = redis.call('PTTL', KEYS[13])
  local full = tonumber(ARGV[7]) * 1000
  local window = tonumber(ARGV[20])
  session = window == 0 or not (left >= 0 and left <= full and left >= full - window)
  if session then
    redis.call('EXPIRE', KEYS[13], ARGV[7])
    redis.call('EXPIRE', KEYS[14], ARGV[7])
    -- The session's fork counter (`ForkTable`) outlives this run's record (ARGV[5]) and
    -- the stream by the window, so no fork number is handed out again while either may
    -- name it; never shortened. Any run's end: ends within the window skip this, and an
    -- allocation gives the counter the largest window itself. (PTTL, not PEXPIRE GT:
    -- Redis 6.2 has no GT.)
    local keep = math.max(tonumber(ARGV[5]), full) + window
    local counter = redis.call('PTTL', KEYS[16])
    if counter == -1 or (counter >= 0 and counter < keep) then
      redis.call('PEXPIRE', KEYS[16], keep)
    end
  end
end
if session then
  local ttl = redis.call('PTTL', KEYS[9])
  if ttl == -1 or (ttl >= 0 and ttl < tonumber(ARGV[8])) then
    redis.call('PEXPIRE', KEYS[9], ARGV[9])
    redis.call('PEXPIRE', KEYS[10], ARGV[9])
  end
end
-- The rider's commands (`Rider`), only now that the end is written; a refused one does
-- not undo the end (2: written, a rider command refused).
local code = 1
local i = 23
while i < base do
  local n = tonumber(ARGV[i])
  local reply = redis.pcall(unpack(ARGV, i + 1, i + n))
  if type(reply) == 'table' and reply.err then code = 2 end
  i = i + 1 + n
end
-- A root run's record just made terminal, when small, goes to the waiters with the end
-- (first: a client of both channels is woken by it); the id alone on the old channel,
-- always. Not a fork's: a client rarely waits on one (its parent's gather does), and a
-- fan-out's records would go to every subscribed client.
if fresh and ARGV[18] == '' and #ARGV[2] <= 16384 then
  redis.call('PUBLISH', ARGV[15] .. ':records', ARGV[3] .. '\\n' .. ARGV[2])
end
redis.call('PUBLISH', ARGV[15], ARGV[3])
if ARGV[16] ~= '1' then return {code} end
local removed = redis.call('SREM', KEYS[11], ARGV[3])
if removed == 1 and redis.call('SCARD', KEYS[11]) == 0 then
  return {code, redis.call('GET', KEYS[12]) or ''}
end
return {code}
"""
)

# What this process last wrote per run (raw JSON, record): the first guess of the next
# compare-and-set, saving its read when nobody else wrote meanwhile. Bounded, LRU.
_LAST_WRITTEN: OrderedDict[str, tuple[Any, RunRecord]] = OrderedDict()
_LAST_WRITTEN_MAX = 4096


def _remember(run_id: str, raw: Any, record: RunRecord) -> None:
    _LAST_WRITTEN[run_id] = (raw, record)
    _LAST_WRITTEN.move_to_end(run_id)
    while len(_LAST_WRITTEN) > _LAST_WRITTEN_MAX:
        _LAST_WRITTEN.popitem(last=False)


def note_read(raw: bytes) -> None:
    """Note a run record this process has just read elsewhere (a worker's pick reads the
    record of the turn it picks): the first guess of the next compare-and-set on it (the
    turn's `start`), which saves that its read. Only a guess, checked like any: a record
    written since is read for real. An unreadable record is not noted."""
    try:
        record = RunRecord.model_validate_json(raw)
    except ValidationError:
        return
    _remember(record.run_id, raw, record)


def _end_reply(run_id: str, reply: Any) -> list[Any]:
    """The end script's reply with its shape checked (Redis replies are untrusted): a
    list whose first item is an integer, with a second item after 0 or -1."""
    if isinstance(reply, list | tuple) and reply:
        try:
            code = int(reply[0])
        except (TypeError, ValueError):
            code = None
        if code is not None and (code not in (0, -1) or len(reply) >= 2):
            return [code, *reply[1:]]
    raise StoreError(f"run end of {run_id!r}: unexpected reply from Redis: {reply!r:.200}")


def _rider_args(rider: Rider | None) -> list[Any]:
    """The end script's ARGV for the rider's commands: how many ARGV they take, then
    each command's argument count and arguments."""
    if rider is None:
        return ["0"]
    flat: list[Any] = []
    for command in rider.commands:
        flat += [str(len(command)), *command]
    return [str(len(flat)), *flat]


def _decode_record(run_id: str, raw: Any) -> RunRecord:
    return RunRecord.of_json(run_id, raw)


def _known(run_id: str, raw: Any) -> RunRecord | None:
    """The record this process last wrote for `run_id` if `raw` is that very JSON, else
    None: it was dumped from that (validated) record, so decoding `raw` whole would give
    it back; a byte comparison instead of a decode (a parent reading the forks it just
    created, or the runs this worker started and ended)."""
    known = _LAST_WRITTEN.get(run_id)
    if known is None or raw is None:
        return None
    written, record = known
    if isinstance(raw, bytes) and isinstance(written, str):
        written = written.encode()
    elif isinstance(raw, str) and isinstance(written, bytes):
        raw = raw.encode()
    return record if written == raw else None


def _read_record(run_id: str, raw: Any) -> RunRecord:
    """`_decode_record`, or the record this process wrote as `raw` (`_known`)."""
    return _known(run_id, raw) or _decode_record(run_id, raw)


class Started(Enum):
    """How `RunStore.start` went."""

    STARTED = "started"  # RUNNING now, and this attempt holds the lease
    NOT_CURRENT = "not_current"  # the run does not expect this job (its `check` failed)
    ABORTED = "aborted"  # its tree or session was aborted before it ever started
    LEASE_TAKEN = "lease_taken"  # a later attempt owns the run's lease
    # A later attempt owns the run's writes or saved its checkpoint (`take_over_ttl_s`).
    WRITES_TAKEN = "writes_taken"


@dataclass(frozen=True)
class Start:
    """`RunStore.start`'s answer: the record as it is now (RUNNING if started) and why
    the run's tree must stop (None: it need not)."""

    outcome: Started
    record: RunRecord
    abort_reason: str | None
    # STARTED with `take_over_ttl_s`: the take-over of the run's writes, for the
    # attempt's publisher to `adopt`.
    taken: TakenOver | None = None


@dataclass(slots=True)
class Rider:
    """Commands a run's end runs in its script, once the end is written (the job's arq
    finish: the run's record holds its outcome, so the job need not wait for a round
    trip of its own). Atomic with the end, after it: an end that writes nothing (its
    record moved on, a newer attempt's fence) runs none of them. They go with each of
    the end's script calls until one confirms them, and never after.

    `confirmed`: the end was written and every command ran without an error. Else
    (never sent, an end that wrote nothing, a refusal, a connection lost on the way)
    whoever made them does their work itself. The commands name keys the script is not
    given as KEYS: fine on one Redis server (the only deployment this project supports:
    its scripts span hash slots), not on a Redis Cluster."""

    commands: list[tuple[Any, ...]]
    sent: bool = False
    confirmed: bool = False


@dataclass(frozen=True)
class EndWrites:
    """What ending a run writes besides its record, in the same script (`RunStore.end`)."""

    session_id: str
    run_ttl_s: float
    stream_ttl_s: int
    # Release this attempt's lease.
    release_attempt: int | None = None
    # Drop the checkpoint's state (its fence kept). Dropped or not, the checkpoint expires
    # `checkpoint_fence_ttl_s` after the end: only a live run keeps one without a TTL.
    drop_checkpoint: bool = False
    # A fork: note its end in its parent's awaited set (and learn if it was the last).
    wake_parent: bool = False
    lease_fence_ttl_s: int = 86_400
    checkpoint_fence_ttl_s: int = 86_400
    # Append the run's terminal status entry to its session stream (once, however often
    # the end is repeated), trimmed to about `stream_maxlen` entries.
    announce: bool = False
    stream_maxlen: int = 100_000
    # The run's publisher's last batch (`EventPublisher.take_last`; needs `announce`,
    # whose retention clocks cover the batch's keys): written first, in the same script.
    # A newer attempt's fence refuses the whole end (`StaleAttempt`).
    batch: LastBatch | None = None
    # Commands the end's script runs once the end is written (`Rider`).
    rider: Rider | None = None


@dataclass(frozen=True)
class Ended:
    """`RunStore.end`'s answer: the terminal record, and, when this was the last fork
    its parent awaited, the parent's record (None if it has none or it is corrupt)."""

    record: RunRecord
    last_fork: bool = False
    parent: RunRecord | None = None


def _flag_reason(reply: Any) -> str | None:
    """The abort reason in a `_START_LUA` reply (the tree's flag first), or None."""
    if int(reply[2]):
        return decode_reason(reply[3])
    if int(reply[4]):
        return decode_reason(reply[5])
    return None


def _terminal_entry(record: RunRecord) -> bytes:
    """The JSON of the terminal status entry of a run whose record is terminal."""
    return StatusEntry(
        run_id=record.run_id,
        status=record.status,
        error=record.error,
        error_type=record.error_type,
        abort_reason=record.abort_reason,
        at=record.finished_at or time.time(),
    ).to_json()


def _session_refresh_ms(session_ms: int) -> int:
    """The TTL a run's end gives the session's owner and run index when they would expire
    before the stream: a little more than the stream's, so that the next ends (for up to
    a minute) find them outliving it and leave them alone."""
    return session_ms + max(2_000, min(60_000, session_ms // 10))


# The longest refresh window (`_session_window_ms`). A fork counter an allocation makes
# outlives the retention by it (`ForkTable`): an end within an open window skips the push.
SESSION_WINDOW_MAX_MS = 60_000


def _session_window_ms(session_ms: int) -> int:
    """How long after an end pushed the session's retention back the next ends leave it
    alone (the stream then expires up to this much sooner than a retention after the
    last end): a tenth of the retention, at most a minute. The end tells its own push
    from the stream's TTL alone, so none when a publisher's idle TTL (or a queued
    entry's) could be taken for one: a retention within two windows of it."""
    window = min(SESSION_WINDOW_MAX_MS, session_ms // 10)
    if abs(session_ms - IDLE_TTL_S * 1000) <= 2 * window:
        return 0
    return window


class RunStore:
    """Run records: create, read, update, conditional transitions, listing, expiry."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    # Each script is registered (its source hashed) on first use: a store is often built
    # for one call (a run's end), which needs one of them.
    @cached_property
    def _cas(self) -> AsyncScript:
        return self._redis.register_script(_CAS_LUA)

    @cached_property
    def _create_many(self) -> AsyncScript:
        return self._redis.register_script(_CREATE_MANY_LUA)

    @cached_property
    def _suspend(self) -> AsyncScript:
        return self._redis.register_script(_SUSPEND_LUA)

    @cached_property
    def _start(self) -> AsyncScript:
        return self._redis.register_script(_START_LUA)

    @cached_property
    def _end(self) -> AsyncScript:
        return self._redis.register_script(_END_LUA)

    @cached_property
    def _recreate(self) -> AsyncScript:
        return self._redis.register_script(_RECREATE_LUA)

    # -- single records ---------------------------------------------------------------

    async def create(
        self, record: RunRecord, *, then: Sequence[tuple[Any, Sequence[Any], Sequence[Any]]] = ()
    ) -> bool:
        """Store a new run record. Returns False (and changes nothing) if the id exists.

        `then`: script calls (`connection.run_scripts`) sent in the same round trip, run
        after the creation, also when Redis had lost a script (a submit's enqueue: a
        worker picking the job finds the record); they run whatever the creation's
        outcome."""
        async with translate_errors("run create"):
            if not then:
                return await self._write(None, None, record)
            call = self._cas_call(None, None, record)
            replies = await run_scripts(self._redis, [call, *then], ordered=True)
        written = bool(int(replies[0]))
        if written:
            _remember(record.run_id, call[2][1], record)
        return written

    async def mark_recreated(self, session_id: str, run_ids: Sequence[str]) -> None:
        """Before runs whose ids lived before are created again (a re-run spawn's forks
        whose records expired, so their earlier lives ended at least `run_retention_s`
        ago): give each run a write fence of attempt 0, so its first start takes over
        its writes as any later attempt's does (from the last event_seq its earlier life
        left), not as the start of a run id nothing has written yet
        (`START_FUNCTION_LUA`'s `first`); and drop what the earlier life's end left that
        would refuse the new life's attempt 1: its lease owner record (fence attempt + 1,
        kept a day) and its checkpoint (only the attempt once ended, kept a day), and a
        write fence of a later attempt. One round trip; attempt 0 refuses no attempt's
        writes."""
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for run_id in run_ids:
            keys = [
                self._keys.run(run_id),
                self._keys.lease(run_id),
                self._keys.checkpoint(session_id, run_id),
                self._keys.run_fence(session_id, run_id),
            ]
            calls.append((self._recreate, keys, [IDLE_TTL_S]))
        if calls:
            async with translate_errors("run re-create"):
                await run_scripts(self._redis, calls)

    async def create_many(self, records: Sequence[RunRecord]) -> list[bool]:
        """`create` for several records in one round trip: one script per status and
        `_CREATE_CHUNK` records (each record's creation atomic on its own)."""
        raws = [r.model_dump_json() for r in records]
        groups: dict[RunStatus, list[int]] = {}
        for i, record in enumerate(records):
            groups.setdefault(record.status, []).append(i)
        calls: list[tuple[Any, list[str], list[Any]]] = []
        order: list[int] = []
        for status, members in groups.items():
            for start in range(0, len(members), _CREATE_CHUNK):
                chunk = members[start : start + _CREATE_CHUNK]
                keys = [self._keys.runs_index(), self._keys.runs_by_status(status)]
                keys += [self._keys.run(records[i].run_id) for i in chunk]
                args: list[Any] = []
                for i in chunk:
                    args += [records[i].run_id, raws[i], repr(records[i].submitted_at * 1000.0)]
                calls.append((self._create_many, keys, args))
                order += chunk
        if not calls:
            return []
        async with translate_errors("run create"):
            replies = await run_scripts(self._redis, calls)
        created = [False] * len(records)
        for i, new in zip(order, (int(x) for reply in replies for x in reply), strict=True):
            created[i] = bool(new)
            if new:
                _remember(records[i].run_id, raws[i], records[i])
        return created

    def _cas_call(
        self,
        old_raw: bytes | None,
        old: RunRecord | None,
        new: RunRecord,
        expire_ms: int | None = None,
    ) -> tuple[Any, list[str], list[Any]]:
        status = new.status if old is None else old.status
        keys = [
            self._keys.run(new.run_id),
            self._keys.runs_index(),
            self._keys.runs_by_status(status),
            self._keys.runs_by_status(new.status),
            self._keys.runs_expiring(),
        ]
        args = [
            b"" if old_raw is None else old_raw,
            new.model_dump_json(),
            new.run_id,
            repr(new.submitted_at * 1000.0),
            "" if expire_ms is None else str(expire_ms),
            _score(_now_ms()),
        ]
        return self._cas, keys, args

    async def _write(
        self,
        old_raw: bytes | None,
        old: RunRecord | None,
        new: RunRecord,
        expire_ms: int | None = None,
    ) -> bool:
        script, keys, args = self._cas_call(old_raw, old, new, expire_ms)
        written = bool(int(await run_script(self._redis, script, keys, args)))
        if written:
            _remember(new.run_id, args[1], new)
        return written

    async def _read_raw(self, run_id: str) -> tuple[bytes, RunRecord]:
        raw = await self._redis.get(self._keys.run(run_id))
        if raw is None:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        return raw, _decode_record(run_id, raw)

    async def _compare_and_set(
        self,
        run_id: str,
        change: Callable[[RunRecord], RunRecord | None],
        *,
        what: str,
        expire_ms: int | None = None,
        known: tuple[bytes, RunRecord] | None = None,
    ) -> RunRecord | None:
        """Read (or start from `known`, else from what this process last wrote), `change`
        (None: leave it), write if nobody wrote meanwhile; retried. A guess that turns
        out stale costs one refused write, never a wrong result: a refusal, or a `change`
        that declines a guessed record, reads the record for real."""
        guessed = known is None
        if known is None:
            known = _LAST_WRITTEN.get(run_id)
        async with translate_errors(what):
            for _ in range(_CAS_RETRIES):
                if known is not None:
                    (raw, current), known = known, None
                else:
                    raw, current = await self._read_raw(run_id)
                    guessed = False
                updated = change(current)
                if updated is None:
                    if guessed:
                        guessed = False
                        continue
                    return None
                script, keys, args = self._cas_call(raw, current, updated, expire_ms)
                if int(await run_script(self._redis, script, keys, args)):
                    _remember(run_id, args[1], updated)
                    return updated
                _LAST_WRITTEN.pop(run_id, None)
        raise StoreError(f"{what} kept conflicting")

    # -- a job's start and a run's end, one round trip each ----------------------------

    async def start(
        self,
        run_id: str,
        *,
        session_id: str,
        root_run_id: str,
        attempt: int,
        worker_id: str,
        lease_ttl_s: float,
        check: Callable[[RunRecord], bool],
        take_over_ttl_s: int | None = None,
        **fields: Any,
    ) -> Start:
        """Start attempt `attempt` of the run: read its tree's and session's abort flags,
        and, if `check(record)` holds, move the record to RUNNING (with `worker_id`,
        `started_at` if it never started, and `fields`) and take the attempt's lease
        (as `LeaseTable.renew`), in one atomic script.

        With `take_over_ttl_s`, the same script also takes over the run's writes for the
        attempt (as `EventPublisher.take_over`, its fence getting that TTL): the start's
        `taken` is for the attempt's publisher to `adopt`, and a take-over refused (a
        later attempt owns the writes or saved the checkpoint) starts nothing
        (`Started.WRITES_TAKEN`).

        Nothing is written if `check` fails, if the run never started and an abort flag
        is set (it is to end ABORTED without starting), or if a later attempt owns the
        lease. One round trip when this process wrote the record last (it spawned the
        run), else two (the first reads the record and the flags).
        """
        _check_fields(fields)
        now = time.time()
        known = _LAST_WRITTEN.get(run_id)
        real = False  # `known` is what Redis answered, not a guess
        reason: str | None = None
        loop = asyncio.get_running_loop()
        async with translate_errors("run start"):
            for _ in range(_CAS_RETRIES):
                updated = None
                if known is not None:
                    updated = self._started(known[1], check, worker_id, now, fields)
                    if updated is None:
                        if real:
                            return Start(Started.NOT_CURRENT, known[1], reason)
                        known = None  # a stale guess, perhaps: read for real
                new_raw = None if updated is None else updated.model_dump_json()
                at = loop.time()
                reply = await self._start_call(
                    run_id,
                    session_id,
                    root_run_id,
                    attempt,
                    worker_id,
                    lease_ttl_s,
                    known,
                    new_raw,
                    take_over_ttl_s,
                )
                code, reason = int(reply[0]), _flag_reason(reply)
                if code == 0:
                    _LAST_WRITTEN.pop(run_id, None)
                    if reply[1] in (b"", ""):
                        raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
                    known, real = (reply[1], _decode_record(run_id, reply[1])), True
                    continue
                assert known is not None
                assert updated is not None
                if code == 1:
                    _remember(run_id, new_raw, updated)
                    taken = None
                    if take_over_ttl_s is not None:
                        taken = taken_over(reply[6], run_id, take_over_ttl_s, at)
                    return Start(Started.STARTED, updated, reason, taken)
                if code == 2:
                    return Start(Started.ABORTED, known[1], reason)
                if code == 3:
                    return Start(Started.LEASE_TAKEN, known[1], reason)
                if code == 4:
                    return Start(Started.WRITES_TAKEN, known[1], reason)
                raise PayloadError(f"lease owner record of {run_id!r} is corrupt")
        raise StoreError("run start kept conflicting")

    @staticmethod
    def _started(
        current: RunRecord,
        check: Callable[[RunRecord], bool],
        worker_id: str,
        now: float,
        fields: dict[str, Any],
    ) -> RunRecord | None:
        if current.status.terminal or not check(current):
            return None
        started = {"started_at": current.started_at or now, "worker_id": worker_id}
        return _apply(current, {**started, **fields, "status": RunStatus.RUNNING})

    async def _start_call(
        self,
        run_id: str,
        session_id: str,
        root_run_id: str,
        attempt: int,
        worker_id: str,
        lease_ttl_s: float,
        known: tuple[Any, RunRecord] | None,
        new_raw: str | None,
        take_over_ttl_s: int | None,
    ) -> Any:
        status = RunStatus.RUNNING if known is None else known[1].status
        keys = [
            self._keys.run(run_id),
            self._keys.runs_by_status(status),
            self._keys.runs_by_status(RunStatus.RUNNING),
            self._keys.lease(run_id),
            self._keys.leases(),
            self._keys.run_abort(session_id, root_run_id),
            self._keys.abort(session_id),
            self._keys.run_fence(session_id, run_id),
            self._keys.seqs(session_id),
            self._keys.checkpoint(session_id, run_id),
        ]
        never_started = known is not None and known[1].started_at is None
        args = [
            b"" if known is None else known[0],
            "" if new_raw is None else new_raw,
            run_id,
            "0" if known is None else repr(known[1].submitted_at * 1000.0),
            str(attempt),
            worker_id,
            _score(_now_ms() + lease_ttl_s * 1000.0),
            "1" if never_started else "0",
            "" if take_over_ttl_s is None else str(take_over_ttl_s),
        ]
        return await run_script(self._redis, self._start, keys, args)

    async def end(
        self,
        run_id: str,
        *,
        status: RunStatus,
        from_status: Iterable[RunStatus],
        writes: EndWrites,
        attempt: int | None = None,
        **fields: Any,
    ) -> Ended | None:
        """Move the run to the terminal `status` (with `fields`) if it is in
        `from_status` (and is attempt `attempt`, when given), with the rest of its end
        (`EndWrites`: the record's retention, its checkpoint, its lease, its fences, the
        run-ends announcement, its parent's awaited set) in the same atomic script.

        Returns None, writing nothing, if the run was not in `from_status`. With
        `attempt`, a run that this attempt already ended with `status` (a retry after
        Redis failed part-way) gets the rest of its end again instead. One round trip
        when this process wrote the record last, else two.

        With `writes.batch` (the run's publisher's last batch), the batch is written
        first in the same script, whatever the record (unless it was delivered already:
        it is written once); if it is not delivered when this returns (None: the run was
        not in `from_status`), `batch.send()` writes it. Raises `StaleAttempt`, writing
        nothing, if the batch's fence belongs to a newer attempt.
        """
        _check_fields(fields)
        allowed = set(from_status)
        known = _LAST_WRITTEN.get(run_id)
        real = False
        async with translate_errors("run end"):
            for _ in range(_CAS_RETRIES):
                if known is None:
                    known, real = await self._read_raw(run_id), True
                raw, current = known
                if current.status in allowed and (attempt is None or current.attempt == attempt):
                    updated = _apply(current, {**fields, "status": status})
                    new_raw = updated.model_dump_json()
                    reply = await self._end_call(raw, current, updated, new_raw, writes)
                    if reply[0] in (1, 2):  # written (2: a rider command refused)
                        _remember(run_id, new_raw, updated)
                        return self._ended(updated, reply)
                    _LAST_WRITTEN.pop(run_id, None)
                    if reply[1] in (b"", ""):
                        raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
                    known, real = (reply[1], _decode_record(run_id, reply[1])), True
                    continue
                if not real:
                    known = None  # a stale guess, perhaps: read for real
                    continue
                if attempt is not None and current.status is status and current.attempt == attempt:
                    return await self.finish(current, writes)  # ended by an earlier try
                if writes.batch is not None and current.status.terminal:
                    await self._drop_if_announced(run_id, writes)
                return None
        raise StoreError("run end kept conflicting")

    async def _drop_if_announced(self, run_id: str, writes: EndWrites) -> None:
        """A run ended elsewhere whose terminal entry is written (its marker): its
        stream's last entry stays the terminal one, so the batch is dropped. (Ended but not
        announced yet: the batch is sent, before the entry.) A rare path: one read."""
        assert writes.batch is not None
        marks = [
            (self._keys.seqs(writes.session_id), f"batch:end:{run_id}"),
            (self._keys.publishers(writes.session_id), f"end:{run_id}"),
        ]
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, field in marks:
                pipe.hget(key, field)
            found = await pipe.execute()
        if any(value is not None for value in found):
            writes.batch.drop()

    async def finish(self, record: RunRecord, writes: EndWrites) -> Ended:
        """The rest of the end of a run whose record is terminal already (its end was
        cut short): what `end` writes besides the record."""
        async with translate_errors("run end"):
            reply = await self._end_call(None, record, None, None, writes)
        return self._ended(record, reply)

    def _ended(self, record: RunRecord, reply: Any) -> Ended:
        if len(reply) < 2:
            return Ended(record)
        parent = record.fork.parent_run_id if record.fork is not None else ""
        try:
            return Ended(record, True, _decode_record(parent, reply[1]) if reply[1] else None)
        except PayloadError as exc:
            log.warning("runs.corrupt_parent", run_id=parent, error=str(exc))
            return Ended(record, True)

    async def _end_call(
        self,
        raw: Any,
        current: RunRecord,
        updated: RunRecord | None,
        new_raw: str | None,
        writes: EndWrites,
    ) -> Any:
        record = updated or current
        run_id, session = record.run_id, writes.session_id
        parent = record.fork.parent_run_id if writes.wake_parent and record.fork else None
        run_ms = max(1, int(writes.run_ttl_s * 1000))
        session_ms = max(1, int(writes.stream_ttl_s * 1000))
        release = writes.release_attempt
        keys = [
            self._keys.run(run_id),
            self._keys.runs_by_status(current.status),
            self._keys.runs_by_status(record.status),
            self._keys.runs_expiring(),
            self._keys.checkpoint(session, run_id),
            self._keys.run_fence(session, run_id),
            self._keys.lease(run_id),
            self._keys.leases(),
            self._keys.session_owner(session),
            self._keys.session_runs(session),
            self._keys.awaited(parent or run_id),
            self._keys.run(parent or run_id),
            self._keys.events(session),
            self._keys.seqs(session),
            self._keys.publishers(session),
            self._keys.forks(session),
        ]
        args = [
            b"" if raw is None else raw,
            "" if new_raw is None else new_raw,
            run_id,
            repr(record.submitted_at * 1000.0),
            str(run_ms),
            _score(_now_ms()),
            str(writes.stream_ttl_s),
            str(session_ms + 1_000),
            str(_session_refresh_ms(session_ms)),
            "" if release is None else str(release),
            "" if release is None else str(release + 1),
            str(writes.lease_fence_ttl_s),
            "1" if writes.drop_checkpoint else "0",
            str(writes.checkpoint_fence_ttl_s),
            self._keys.run_ends(),
            "1" if parent is not None else "0",
            _terminal_entry(record) if writes.announce else "",
            "" if record.root_run_id == run_id else record.root_run_id,
            str(writes.stream_maxlen),
            str(_session_window_ms(session_ms)),
            "1" if new_raw is not None and release == current.attempt else "0",
        ]
        rider = writes.rider if writes.rider is not None and not writes.rider.confirmed else None
        args.extend(_rider_args(rider))
        batch = writes.batch
        if batch is None or batch.is_delivered or batch.is_dropped:
            return self._rode(rider, _end_reply(run_id, await self._send_end(keys, args)))
        if not writes.announce:
            raise ValueError("an end with the publisher's last batch must announce the end")
        reply = _end_reply(run_id, await self._send_end(keys, [*args, *batch.args()]))
        if reply[0] == -1:
            batch.refused(reply[1])
        batch.delivered()
        return self._rode(rider, reply)

    async def _send_end(self, keys: list[Any], args: list[Any]) -> Any:
        return await run_script(self._redis, self._end, keys, args)

    @staticmethod
    def _rode(rider: Rider | None, reply: list[Any]) -> list[Any]:
        """Note what became of the rider sent with this end (`Rider.confirmed`)."""
        if rider is not None:
            rider.sent = True
            rider.confirmed = reply[0] == 1
        return reply

    async def get(self, run_id: str) -> RunRecord:
        """The run's record; `RunNotFound` if there is none, `PayloadError` if corrupt."""
        async with translate_errors("run get"):
            raw = await self._redis.get(self._keys.run(run_id))
        if raw is None:
            raise RunNotFound(f"no run {run_id!r}", run_id=run_id)
        return _decode_record(run_id, raw)

    async def update(self, run_id: str, **fields: Any) -> RunRecord:
        """Change some fields (atomic read-modify-write, retried on conflict)."""
        _check_fields(fields)
        updated = await self._compare_and_set(
            run_id, lambda current: _apply(current, fields), what="run update"
        )
        assert updated is not None
        return updated

    async def transition(
        self,
        run_id: str,
        *,
        from_status: Iterable[RunStatus] | RunStatus,
        to: RunStatus,
        check: Callable[[RunRecord], bool] | None = None,
        expire_s: float | None = None,
        known: tuple[bytes, RunRecord] | None = None,
        **fields: Any,
    ) -> RunRecord | None:
        """Move the run to `to` (and set `fields`) only if its status is in `from_status`
        (and `check(record)` holds, when given). With `expire_s`, the record also starts
        expiring, in the same atomic write (as `expire` does). `known`: the raw record
        and its decoding as last read (`get_raw`), tried first without reading again.

        Atomic: of two concurrent transitions out of the same status, exactly one wins.
        Returns the new record, or None (nothing changed) if the status did not match.
        """
        _check_fields(fields)
        allowed = {from_status} if isinstance(from_status, RunStatus) else set(from_status)

        def change(current: RunRecord) -> RunRecord | None:
            if current.status not in allowed or (check is not None and not check(current)):
                return None
            return _apply(current, {**fields, "status": to})

        expire_ms = None if expire_s is None else max(1, int(expire_s * 1000))
        return await self._compare_and_set(
            run_id, change, what="run transition", expire_ms=expire_ms, known=known
        )

    async def get_raw(self, run_id: str) -> tuple[bytes, RunRecord]:
        """`get`, with the stored JSON (pass both as `transition(known=...)` to save a
        read when nothing changed meanwhile)."""
        async with translate_errors("run get"):
            return await self._read_raw(run_id)

    async def get_many(self, run_ids: Iterable[str]) -> dict[str, RunRecord]:
        """The records that exist among `run_ids` (one MGET; corrupt ones skipped)."""
        return {r.run_id: r for r in await self._load_many(builtins.list(run_ids))}

    async def results_many(self, run_ids: Iterable[str]) -> dict[str, RunRecord | RunResultView]:
        """What `get_many` answers, for reading ended runs' results (a gather): an ended
        run's record as its `RunResultView` (its request left undecoded), a live one's
        record whole (a live record must be whole, as `_status_of` checks); missing and
        corrupt ones skipped (a corrupt one with a warning), as by `get_many`. One MGET."""
        ids = builtins.list(run_ids)
        async with translate_errors("run list"):
            raws = await self._redis.mget([self._keys.run(r) for r in ids]) if ids else []
        found: dict[str, RunRecord | RunResultView] = {}
        for run_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            try:
                found[run_id] = _read_result(run_id, raw)
            except PayloadError as exc:
                log.warning("runs.corrupt_record", run_id=run_id, error=str(exc))
        return found

    async def suspend(
        self, run_id: str, *, attempt: int, segment: int, waiting_for: Iterable[str]
    ) -> bool:
        """Park a running run until the runs in `waiting_for` (its forks) have all ended.

        Returns False, changing nothing, if they already have (carry on instead), or if
        the run is no longer this attempt and segment. Atomic with the forks' own
        transitions: a fork that ends meanwhile is either seen here or sees WAITING.
        """
        forks = builtins.list(dict.fromkeys(waiting_for))
        terminal = [self._keys.runs_by_status(s) for s in RunStatus if s.terminal]
        # What this process wrote last (it started the run) saves the read; a stale
        # guess costs one refused script.
        guess = _LAST_WRITTEN.get(run_id)
        async with translate_errors("run suspend"):
            for _ in range(_CAS_RETRIES):
                raw, current = guess or await self._read_raw(run_id)
                if (
                    current.status is not RunStatus.RUNNING
                    or current.attempt != attempt
                    or current.segment != segment
                ):
                    if guess is not None:
                        guess = None
                        continue
                    return False
                guess = None
                raws = await self._redis.mget([self._keys.run(f) for f in forks]) if forks else []
                running = [f for f, r in zip(forks, raws, strict=True) if _is_live(f, r)]
                if not running:
                    return False
                updated = _apply(current, {"status": RunStatus.WAITING, "waiting_for": running})
                keys = [
                    self._keys.run(run_id),
                    self._keys.runs_by_status(RunStatus.RUNNING),
                    self._keys.runs_by_status(RunStatus.WAITING),
                    self._keys.awaited(run_id),
                    *terminal,
                ]
                args = [
                    raw,
                    updated.model_dump_json(),
                    run_id,
                    repr(updated.submitted_at * 1000.0),
                    str(_AWAITED_TTL_S),
                    str(len(terminal)),
                    *running,
                ]
                if int(await run_script(self._redis, self._suspend, keys, args)):
                    _remember(run_id, args[1], updated)
                    return True
        raise StoreError("run suspend kept conflicting")

    async def ready_to_resume(self, run_id: str) -> RunRecord | None:
        """The record of a WAITING run whose awaited forks have all ended, else None."""
        try:
            record = await self.get(run_id)
        except (RunNotFound, PayloadError):
            return None
        if record.status is not RunStatus.WAITING:
            return None
        forks = record.waiting_for
        async with translate_errors("run list"):
            raws = await self._redis.mget([self._keys.run(f) for f in forks]) if forks else []
        missing = []
        for fork, raw in zip(forks, raws, strict=True):
            try:
                if raw is not None and not _status_of(fork, raw).terminal:
                    return None
            except PayloadError as exc:
                log.warning("runs.corrupt_record", run_id=fork, error=str(exc))
                raw = None
            if raw is None:
                missing.append(fork)
        if missing:
            # A fork record that vanished (expired) can never end: do not wait on it.
            log.warning("runs.waiting_for_missing_fork", run_id=run_id, forks=missing)
        return record

    async def waiting(self, limit: int = 1000) -> builtins.list[str]:
        """Ids of runs suspended in a gather (oldest first), for the safety-net sweep."""
        async with translate_errors("run waiting list"):
            ids = await self._redis.zrange(
                self._keys.runs_by_status(RunStatus.WAITING), 0, limit - 1
            )
        return [text(i) for i in ids]

    async def queued_before(self, before_ms: float, limit: int = 200) -> builtins.list[str]:
        """Ids of queued runs submitted before `before_ms` (oldest first, at most `limit`),
        for the sweep of runs picked by a worker that never started them."""
        async with translate_errors("run queued list"):
            ids = await self._redis.zrangebyscore(
                self._keys.runs_by_status(RunStatus.QUEUED), "-inf", before_ms, start=0, num=limit
            )
        return [text(i) for i in ids]

    async def expire(self, run_id: str, ttl_s: float) -> bool:
        """Let the record expire after `ttl_s`; it leaves the indexes once gone.

        Returns False if there is no such record.
        """
        ttl_ms = max(1, int(ttl_s * 1000))
        async with (
            translate_errors("run expire"),
            self._redis.pipeline(transaction=True) as pipe,
        ):
            pipe.pexpire(self._keys.run(run_id), ttl_ms)
            pipe.zadd(self._keys.runs_expiring(), {run_id: math.floor(_now_ms()) + ttl_ms})
            existed, _ = await pipe.execute()
        return bool(existed)

    # -- listing ------------------------------------------------------------------------

    async def list(
        self,
        *,
        status: RunStatus | None = None,
        agent: str | None = None,
        tenant: str | None = None,
        offset: int = 0,
        limit: int = 50,
        include_forks: bool = False,
    ) -> builtins.list[RunRecord]:
        """Runs, newest first, optionally only one status / agent / tenant. Fork runs are
        left out unless `include_forks` (they belong to their root run).

        Missing and corrupt records are skipped (a corrupt one with a warning).
        """
        await self.prune_expired()
        index = self._keys.runs_by_status(status) if status else self._keys.runs_index()
        found: builtins.list[RunRecord] = []
        to_skip, start, page = offset, 0, max(100, offset + limit)
        while len(found) < limit:
            async with translate_errors("run list"):
                ids = await self._redis.zrevrange(index, start, start + page - 1)
            if not ids:
                break
            start += len(ids)
            for record in await self._load_many([text(i) for i in ids]):
                if not _matches(record, status, agent, tenant):
                    continue
                if record.fork is not None and not include_forks:
                    continue
                if to_skip:
                    to_skip -= 1
                    continue
                found.append(record)
                if len(found) >= limit:
                    break
        return found

    async def counts_by_status(self) -> dict[str, int]:
        """How many runs are in each status (every status present, zeros included)."""
        await self.prune_expired()
        async with (
            translate_errors("run counts"),
            self._redis.pipeline(transaction=False) as pipe,
        ):
            for status in RunStatus:
                pipe.zcard(self._keys.runs_by_status(status))
            counts = await pipe.execute()
        return {status.value: int(n) for status, n in zip(RunStatus, counts, strict=True)}

    # -- internals --------------------------------------------------------------------

    async def _load_many(self, run_ids: builtins.list[str]) -> builtins.list[RunRecord]:
        async with translate_errors("run list"):
            raws = await self._redis.mget([self._keys.run(r) for r in run_ids])
        records = []
        for run_id, raw in zip(run_ids, raws, strict=True):
            if raw is None:
                continue  # expired or deleted since it was indexed
            try:
                records.append(_read_record(run_id, raw))
            except PayloadError as exc:
                log.warning("runs.corrupt_record", run_id=run_id, error=str(exc))
        return records

    async def prune_expired(self) -> None:
        """Drop index entries of records whose TTL has run out (listing does it, and every
        worker's reaper does it periodically, so the indexes hold only runs still kept)."""
        expiring = self._keys.runs_expiring()
        async with translate_errors("run index prune"):
            due = await self._redis.zrangebyscore(expiring, "-inf", _now_ms())
            if not due:
                return
            ids = [text(i) for i in due]
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    pipe.exists(self._keys.run(run_id))
                exists = await pipe.execute()
            gone = [run_id for run_id, n in zip(ids, exists, strict=True) if not n]
            if not gone:
                return
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self._keys.runs_index(), *gone)
                for status in RunStatus:
                    pipe.zrem(self._keys.runs_by_status(status), *gone)
                pipe.zrem(expiring, *gone)
                await pipe.execute()


def _is_live(run_id: str, raw: Any) -> bool:
    """True if the stored record is of a run that has not ended (missing: not live)."""
    if raw is None:
        return False
    try:
        return not _status_of(run_id, raw).terminal
    except PayloadError:
        return False


def _status_of(run_id: str, raw: Any) -> RunStatus:
    """A stored record's status, decoding the whole record only for a run that has not
    ended (a live run's record must be whole, as a full decode would check); PayloadError
    if it is corrupt. A record this process wrote as `raw` needs no decode (`_known`)."""
    known = _known(run_id, raw)
    if known is not None:
        return known.status
    status = RunStatusView.of_json(run_id, raw).status
    if not status.terminal:
        _decode_record(run_id, raw)
    return status


def _read_result(run_id: str, raw: Any) -> RunRecord | RunResultView:
    """A stored record for its result: the record this process wrote as `raw`, else an
    ended run's `RunResultView`, else (a live run) the whole record, as `_status_of`
    checks it; PayloadError if it is corrupt."""
    known = _known(run_id, raw)
    if known is not None:
        return known
    view = RunResultView.of_json(run_id, raw)
    if view.status.terminal:
        return view
    return _decode_record(run_id, raw)


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = set(fields) - set(RunRecord.model_fields)
    if unknown:
        raise ValueError(f"unknown RunRecord fields: {sorted(unknown)}")
    fixed = set(fields) & _FIXED_FIELDS
    if fixed:
        raise ValueError(f"RunRecord fields cannot be changed: {sorted(fixed)}")


def _apply(record: RunRecord, fields: dict[str, Any]) -> RunRecord:
    """A copy of `record` with `fields` changed, each validated as the record's field (a
    bad value fails here rather than on read); the record is left as it was."""
    return record.updated(fields)


def _matches(
    record: RunRecord, status: RunStatus | None, agent: str | None, tenant: str | None
) -> bool:
    return (
        (status is None or record.status == status)
        and (agent is None or record.agent == agent)
        and (tenant is None or record.tenant == tenant)
    )


# The awaited-forks set outlives any sane gather; the waiting-run sweep does not need it.
_AWAITED_TTL_S = 7 * 86_400

_ATTEMPT = "attempt"
_FENCE = "fence"
_STATE = "state"
# How many attempts of the run were handed back (not lost): they do not count as failures.
_HANDBACKS = "handbacks"
_HELD = "held"
_HANDED_BACK = "handed_back"


# `LeaseTable.renew` of one lease as a Lua function: refuse (-1) a corrupt owner record,
# (0) a lease a later attempt owns or that was claimed or released after this attempt,
# and, with `extend` "1", one this attempt does not hold right now; else (1) the attempt
# holds it. The caller moves its deadline. A lease this attempt already holds on this
# worker (a background renewal's usual case: the owner record reads exactly what the HSET
# would write) is not written again: the HSET would change nothing, and neither would
# the PERSIST, since every writer of state 'held' (a start, a renewal) clears the key's
# TTL and only releases and claims (which write another state) give it one.
_RENEW_FUNCTION_LUA = """
local function renew(owner, attempt_arg, worker, extend)
  local f = redis.call('HMGET', owner, 'attempt', 'fence', 'state', 'worker')
  local attempt = tonumber(attempt_arg)
  local held = tonumber(f[1])
  local fence = tonumber(f[2])
  if (f[1] and not held) or (f[2] and not fence) then return -1 end
  if (fence and attempt < fence) or (held and held > attempt) then return 0 end
  if extend == '1' and (held ~= attempt or f[3] ~= 'held') then return 0 end
  if not (f[1] == attempt_arg and f[3] == 'held' and f[4] == worker) then
    redis.call('HSET', owner, 'attempt', attempt_arg, 'worker', worker, 'state', 'held')
    redis.call('PERSIST', owner)
  end
  return 1
end
"""
# `LeaseTable.renew` as one atomic script. KEYS: owner, deadlines
# ARGV: attempt, worker id, deadline ms, extend only ("1"/"0"), run id. Reply: 1/0/-1
_RENEW_LUA = (
    _RENEW_FUNCTION_LUA
    + """
local code = renew(KEYS[1], ARGV[1], ARGV[2], ARGV[4])
if code == 1 then redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5]) end
return code
"""
)
# `LeaseTable.renew_many`: `renew` for several leases in one script (a lease keeper's
# pass), with one ZADD of the new deadline for those renewed. A lease whose owner key
# is of another type is refused alone (-2: its HMGET failed, nothing was written).
# KEYS: deadlines, owner...; ARGV: worker id, deadline ms, extend only, (attempt, run
# id) per owner. Reply: one code per owner.
_RENEW_MANY_LUA = (
    _RENEW_FUNCTION_LUA
    + """
local codes, renewed = {}, {}
for i = 2, #KEYS do
  local a = 4 + (i - 2) * 2
  local ok, code = pcall(renew, KEYS[i], ARGV[a], ARGV[1], ARGV[3])
  if not ok then code = -2 end
  codes[#codes + 1] = code
  if code == 1 then
    renewed[#renewed + 1] = ARGV[2]
    renewed[#renewed + 1] = ARGV[a + 1]
  end
end
if #renewed > 0 then redis.call('ZADD', KEYS[1], unpack(renewed)) end
return codes
"""
)
# Leases per `_RENEW_MANY_LUA` call (Lua's unpack is bounded by its stack).
_RENEW_CHUNK = 1000
# `LeaseTable.release` as one atomic script. KEYS: owner, deadlines
# ARGV: attempt, run id, fence, fence ttl. Reply: 1/0
_RELEASE_LUA = """
local held = redis.call('HGET', KEYS[1], 'attempt')
if (not held) or tonumber(held) ~= tonumber(ARGV[1]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'fence', ARGV[3], 'state', 'released')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# `LeaseTable.park` as one atomic script. KEYS: owner, deadlines
# ARGV: attempt, worker id ("" = any), run id. Reply: 1 parked, 0 not this holder's,
# -1 corrupt owner record
_PARK_LUA = """
local f = redis.call('HMGET', KEYS[1], 'attempt', 'worker')
local held = tonumber(f[1])
if f[1] and not held then return -1 end
if held ~= tonumber(ARGV[1]) then return 0 end
if ARGV[2] ~= '' and f[2] ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'parked')
return 1
"""


def _renew_codes(reply: Any) -> builtins.list[int]:
    """The codes of a `_RENEW_MANY_LUA` reply (Redis replies are untrusted: anything but
    a list of integers is an error)."""
    if not isinstance(reply, list):
        raise StoreError(f"lease renew: unexpected reply from Redis: {reply!r:.200}")
    try:
        return [int(code) for code in reply]
    except (TypeError, ValueError) as exc:
        raise StoreError(f"lease renew: unexpected reply from Redis: {reply!r:.200}") from exc


def _opt_int(raw: Any, what: str) -> int | None:
    return None if raw is None else parse_int(raw, what)


class LeaseTable:
    """Liveness leases of running attempts, with fencing.

    A worker `renew`s its attempt's lease every few seconds. When a lease's deadline
    passes, a reaper `claim_expired`s it (exactly one of several succeeds) and retries the
    run; the claim raises the run's fence, so the old attempt's next `renew` returns
    False and it knows to stop.

    An attempt that cannot go on because Redis was unreachable `hand_back`s its lease once
    Redis answers again: the lease expires at once and its claim is counted in the lease's
    `handbacks`, not as a lost worker.
    """

    def __init__(self, redis: Redis, keys: Keys, *, fence_ttl_s: int = 86_400) -> None:
        self._redis = redis
        self._keys = keys
        self._fence_ttl_s = fence_ttl_s
        self._renew = redis.register_script(_RENEW_LUA)
        self._renew_many = redis.register_script(_RENEW_MANY_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._park = redis.register_script(_PARK_LUA)

    async def renew(
        self,
        run_id: str,
        *,
        attempt: int,
        worker_id: str,
        ttl_s: float,
        extend_only: bool = False,
    ) -> bool:
        """Hold (or take) the lease until now + `ttl_s`.

        Returns False, changing nothing, if a later attempt owns the lease or the lease
        was claimed or released after this attempt: this attempt must stop. With
        `extend_only`, also if the attempt does not hold it right now (it was parked or
        handed back meanwhile): a background renewal never takes a lease back.
        """
        keys = [self._keys.lease(run_id), self._keys.leases()]
        deadline = _now_ms() + ttl_s * 1000.0
        args = [str(attempt), worker_id, _score(deadline), "1" if extend_only else "0", run_id]
        async with translate_errors("lease renew"):
            reply = int(await run_script(self._redis, self._renew, keys, args))
        if reply < 0:
            raise PayloadError(f"lease owner record of {run_id!r} is corrupt")
        return reply == 1

    async def renew_many(
        self,
        leases: Sequence[tuple[str, int]],
        *,
        worker_id: str,
        ttl_s: float,
        extend_only: bool = False,
    ) -> builtins.list[bool | None]:
        """`renew` for several `(run_id, attempt)` leases in one round trip (one script
        per `_RENEW_CHUNK` leases, each lease checked on its own): True or False for each
        as `renew` says, None for a lease whose owner record is corrupt (unreadable, or a
        key of another type: the others are renewed)."""
        if not leases:
            return []
        deadline = _score(_now_ms() + ttl_s * 1000.0)
        only = "1" if extend_only else "0"
        calls = []
        for first in range(0, len(leases), _RENEW_CHUNK):
            chunk = leases[first : first + _RENEW_CHUNK]
            keys = [self._keys.leases(), *(self._keys.lease(run_id) for run_id, _ in chunk)]
            args = [worker_id, deadline, only]
            for run_id, attempt in chunk:
                args += [str(attempt), run_id]
            calls.append((self._renew_many, keys, args))
        async with translate_errors("lease renew"):
            replies = await run_scripts(self._redis, calls)
        codes = [code for reply in replies for code in _renew_codes(reply)]
        if len(codes) != len(leases):
            raise StoreError(f"lease renew: {len(codes)} replies for {len(leases)} leases")
        return [None if code < 0 else code == 1 for code in codes]

    async def release(self, run_id: str, attempt: int) -> bool:
        """Give the lease up at the end of the attempt. False if `attempt` did not hold it."""
        keys = [self._keys.lease(run_id), self._keys.leases()]
        args = [str(attempt), run_id, str(attempt + 1), str(self._fence_ttl_s)]
        async with translate_errors("lease release"):
            return bool(int(await run_script(self._redis, self._release, keys, args)))

    async def hand_back(self, run_id: str, attempt: int) -> bool:
        """Give the run back for another attempt to resume from its checkpoint, because
        this one could not reach Redis: the lease expires now (the next reaper pass
        re-queues the run) and that claim counts as a hand-back, not a lost worker.

        False, changing nothing, if `attempt` no longer holds the lease (it was claimed
        meanwhile, and counted as lost)."""
        owner = self._keys.lease(run_id)

        async def hand_back(pipe: Pipeline) -> bool:
            fields = await resolve(pipe.hmget(owner, [_ATTEMPT, _FENCE]))
            held = _opt_int(fields[0], "lease attempt")
            fence = _opt_int(fields[1], "lease fence")
            if held != attempt or (fence is not None and fence > attempt):
                return False
            begin(pipe)
            pipe.hset(owner, _STATE, _HANDED_BACK)
            pipe.zadd(self._keys.leases(), {run_id: 0})
            return True

        return await optimistic(self._redis, [owner], hand_back, what="lease hand-back")

    async def handbacks(self, run_id: str) -> int:
        """How many attempts of the run were handed back (claims not counted as lost)."""
        async with translate_errors("lease hand-backs read"):
            raw = await resolve(self._redis.hget(self._keys.lease(run_id), _HANDBACKS))
        return _opt_int(raw, "lease hand-backs") or 0

    async def park(self, run_id: str, attempt: int, worker_id: str | None = None) -> bool:
        """Stop the lease clock while the run is suspended (nothing runs it, nothing to
        reap), keeping the fence: the same attempt takes the lease again on resume.

        With `worker_id`, only if that worker still holds it (a resumed segment that
        already took the lease elsewhere keeps it)."""
        keys = [self._keys.lease(run_id), self._keys.leases()]
        args = [str(attempt), "" if worker_id is None else worker_id, run_id]
        async with translate_errors("lease park"):
            reply = int(await run_script(self._redis, self._park, keys, args))
        if reply < 0:
            raise PayloadError(f"lease owner record of {run_id!r} is corrupt")
        return reply == 1

    async def expired(self, now_ms: float | None = None) -> builtins.list[str]:
        """Run ids whose lease deadline has passed."""
        now = _now_ms() if now_ms is None else now_ms
        async with translate_errors("lease scan"):
            ids = await self._redis.zrangebyscore(self._keys.leases(), "-inf", now)
        return [text(i) for i in ids]

    async def claim_expired(self, run_id: str, now_ms: float | None = None) -> int | None:
        """Remove an expired lease; only one caller wins.

        Returns the attempt that held it (0 if its owner record is missing or corrupt),
        or None if the lease is not (or no longer) expired.
        """
        owner = self._keys.lease(run_id)

        async def claim(pipe: Pipeline) -> int | None:
            deadline = await pipe.zscore(self._keys.leases(), run_id)
            now = _now_ms() if now_ms is None else now_ms
            if deadline is None or float(deadline) > now:
                return None
            fields = await resolve(pipe.hmget(owner, [_ATTEMPT, _STATE]))
            try:
                held = _opt_int(fields[0], "lease attempt") or 0
            except PayloadError as exc:
                log.warning("lease.corrupt_owner", run_id=run_id, error=str(exc))
                held = 0
            begin(pipe)
            if fields[1] is not None and text(fields[1]) == _HANDED_BACK:
                pipe.hincrby(owner, _HANDBACKS, 1)
            self._queue_end(pipe, run_id, fence=held + 1, state="claimed")
            return held

        return await optimistic(self._redis, [owner], claim, what="lease claim")

    async def owner(self, run_id: str) -> dict[str, Any] | None:
        """The lease's owner record (attempt, worker, fence, state), for inspection."""
        async with translate_errors("lease owner read"):
            raw = await resolve(self._redis.hgetall(self._keys.lease(run_id)))
        if not raw:
            return None
        return {text(k): text(v) for k, v in raw.items()}

    def _queue_end(self, pipe: Pipeline, run_id: str, *, fence: int, state: str) -> None:
        owner = self._keys.lease(run_id)
        pipe.zrem(self._keys.leases(), run_id)
        pipe.hset(owner, mapping={_FENCE: str(fence), _STATE: state})
        pipe.expire(owner, self._fence_ttl_s)


class WorkerRegistry:
    """Worker heartbeats: `beat` every few seconds, `list` the live ones."""

    # Entries of workers dead this long are deleted when the registry is listed.
    forget_after_s: float = 3600.0

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def beat(self, worker_id: str, info: dict[str, Any], ttl_s: float) -> None:
        """Record that the worker is alive for the next `ttl_s` seconds, with its info."""
        now = time.time()
        value = dump_json(
            {"worker_id": worker_id, "info": info, "at": now, "expires_at": now + ttl_s}
        )
        async with translate_errors("worker heartbeat"):
            await resolve(self._redis.hset(self._keys.workers(), worker_id, value))

    async def list(self) -> builtins.list[dict[str, Any]]:
        """Live workers, most recent heartbeat first: their info plus `worker_id`,
        `last_beat` and `expires_at` (epoch seconds)."""
        async with translate_errors("worker list"):
            raw = await resolve(self._redis.hgetall(self._keys.workers()))
        now = time.time()
        live: builtins.list[dict[str, Any]] = []
        forget: builtins.list[Any] = []
        for field, value in raw.items():
            beat = _decode_beat(field, value)
            if beat is None:
                forget.append(field)  # unreadable: it can never become live again
            elif beat["expires_at"] > now:
                live.append(beat)
            elif beat["expires_at"] < now - self.forget_after_s:
                forget.append(field)
        if forget:
            async with translate_errors("worker prune"):
                await resolve(self._redis.hdel(self._keys.workers(), *forget))
        live.sort(key=lambda b: b["last_beat"], reverse=True)
        return live

    async def prune(self) -> None:
        """Forget workers dead for `forget_after_s` and unreadable entries (what bounds
        the registry; every worker's reaper calls it periodically)."""
        await self.list()

    async def remove(self, worker_id: str) -> None:
        """Forget a worker (at clean shutdown)."""
        async with translate_errors("worker remove"):
            await resolve(self._redis.hdel(self._keys.workers(), worker_id))


def _decode_beat(field: Any, value: Any) -> dict[str, Any] | None:
    try:
        worker_id = text(field)
        data = load_json(value, f"heartbeat of {worker_id!r}")
        info, at, expires = data["info"], float(data["at"]), float(data["expires_at"])
        if not isinstance(info, dict):
            raise PayloadError(f"heartbeat of {worker_id!r} has non-object info")
    except (PayloadError, KeyError, TypeError, ValueError) as exc:
        log.warning("workers.bad_heartbeat", field=repr(field), error=str(exc))
        return None
    return {**info, "worker_id": worker_id, "last_beat": at, "expires_at": expires}
