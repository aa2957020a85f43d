"""arq's per-job bookkeeping in two round trips: the pick and the finish, one script each.

arq 0.28 picks a job (WATCH/EXISTS/ZSCORE/MULTI/PSETEX/EXEC), then reads it (MULTI GET
job, INCRBY/EXPIRE retry EXEC), runs it and finishes it (MULTI SET result, ZREM abort,
ZREM queue, DEL in-progress/retry/job EXEC): three round trips or more, one after the
other, for every job. Here the pick also reads the job and counts the try, and the
finish is one script with the same effects as arq's `finish_job`/`finish_failed_job`.
The keys are arq's own (`arq:in-progress:*`, `arq:job:*`, `arq:retry:*`, `arq:result:*`,
`arq:abort`) and so are their values, so arq's tools and our queue still read them.

The in-progress value names the worker that picked the job (arq writes `1`; only its
existence is ever read), so a pick whose reply was lost can be undone by exactly that
worker (`REPAIR_PICK_LUA`) without touching a pick another worker made since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.store.batches import PICK_CLAIM_LUA
from orchestrator.store.runs import PICK_START_LUA

# arq's TTL of a retry counter (run_job's `pipe.expire(retry_key, 88400)`).
RETRY_TTL_S = 88400

# Mark a job in progress unless it already is (-2 then: a worker runs it), or left the
# queue, or is not due yet (-1 then), and read what running it needs: {score, job bytes
# (nil when gone), try, aborted (1: it was in arq's abort set), broken (1: its job or
# retry key could not be read)}. arq's EXISTS + PSETEX is one SET NX here, after the
# queue's score (a job that has left the queue since it was listed costs one read). The
# reads of the job come after it so that a broken job is ours to remove. A first try
# creates the retry counter with arq's TTL in one SET NX (arq: INCR + EXPIRE); a later
# try counts with INCR, leaving the TTL of the first (a day). With a sixth
# key (and no claim), the pick reads that key too (a turn's job: its run's record, which
# its start reads next) and replies with its value (false when missing or not a string)
# as a sixth element. With three more keys and the start's arguments, a turn's pick also
# starts its run when it can (`store.runs.PICK_START_LUA`: its first try, not aborted),
# and replies with the start's reply as a seventh element ({0}: not started here).
# KEYS in-progress, queue, job, retry, abort[, claims, meta | , read[, lease owner,
#      lease deadlines, running index]]
# ARGV job id, now (ms), in-progress ttl (ms), picker, check abort ('1'/'0')[, index,
# claim | , the start's arguments]: a batch item's job is claimed in the same step
# (PICK_CLAIM_LUA).
_PICK_BODY_LUA = (
    """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if (not score) or tonumber(score) > tonumber(ARGV[2]) then return -1 end
if not redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[3], 'NX') then return -2 end
local aborted = 0
if ARGV[5] == '1' then aborted = redis.pcall('ZREM', KEYS[5], ARGV[1]) end
if type(aborted) ~= 'number' then aborted = 0 end
if #KEYS == 7 then
"""
    + PICK_CLAIM_LUA
    + f"""
end
-- A turn's job and its run's record in one MGET (it reads a key of another type as
-- missing: a job it finds missing is read again alone, which says if it is broken).
local job, read = nil, false
if #KEYS == 6 or #KEYS == 9 then
  local both = redis.call('MGET', KEYS[3], KEYS[6])
  job, read = both[1], both[2]
end
if not job then job = redis.pcall('GET', KEYS[3]) end
local try = 1
if not redis.call('SET', KEYS[4], '1', 'EX', {RETRY_TTL_S}, 'NX') then
  -- A later try (rare) counts on, its counter keeping the first try's TTL; a counter
  -- found without one (untrusted contents) gets arq's.
  try = redis.pcall('INCR', KEYS[4])
  if type(try) ~= 'table' and redis.call('TTL', KEYS[4]) == -1 then
    redis.call('EXPIRE', KEYS[4], {RETRY_TTL_S})
  end
end
if type(job) == 'table' or type(try) == 'table' then return {{score, false, 0, aborted, 1}} end
if #KEYS == 6 or #KEYS == 9 then
  if type(read) ~= 'string' then read = false end
  if #KEYS == 6 then return {{score, job, try, aborted, 0, read}} end
  local started = {{0}}
  if read and type(job) == 'string' and try == 1 and aborted == 0 then
    local ok, reply = pcall(start_picked, job, read, KEYS[6], KEYS[7], KEYS[8], KEYS[9], 6, ARGV)
    started = ok and reply or {{-2}}
  end
  return {{score, job, try, aborted, 0, read, started}}
end
return {{score, job, try, aborted, 0}}
"""
)
PICK_LUA = PICK_START_LUA + _PICK_BODY_LUA

# Several jobs' picks in one script (the jobs for all the slots free at once): each as
# `PICK_LUA` alone, under `pcall` (a job whose keys hold the wrong type is refused
# alone, with the error `PICK_LUA` would have failed with as its reply: what it wrote
# before failing stays, as it would). One script call for a batch instead of one per job.
# KEYS each job's PICK_LUA KEYS, one job after the other
# ARGV n jobs, (n keys, n args) per job, then each job's PICK_LUA ARGV
# Reply: one reply per job, as PICK_LUA's (or an error reply).
PICK_MANY_LUA = (
    PICK_START_LUA
    + "local function pick(KEYS, ARGV)\n"
    + _PICK_BODY_LUA
    + """end
local n = tonumber(ARGV[1])
local ko, ao = 0, 1 + 2 * n
local replies = {}
for j = 1, n do
  local nk, na = tonumber(ARGV[2 * j]), tonumber(ARGV[2 * j + 1])
  local ok, reply = pcall(pick, {unpack(KEYS, ko + 1, ko + nk)}, {unpack(ARGV, ao + 1, ao + na)})
  if not ok then
    if type(reply) == 'table' and reply.err then reply = reply.err end
    reply = redis.error_reply(tostring(reply))
  end
  replies[j] = reply
  ko, ao = ko + nk, ao + na
end
return replies
"""
)
# Jobs per `PICK_MANY_LUA` call (a batch larger than this is sent as several calls).
PICK_MANY_CHUNK = 64

# Undo a pick whose reply never came back, if it happened and is still this worker's:
# the job is no longer in progress and its try is not counted.
# KEYS in-progress, retry; ARGV picker. Reply: 1 if a pick was undone.
REPAIR_PICK_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local tries = redis.pcall('DECR', KEYS[2])
if type(tries) ~= 'number' or tries <= 0 then redis.call('DEL', KEYS[2]) end
return 1
"""

# arq's finish_job and finish_failed_job in one script. With `finish`: the result (if
# any, with its PX, none for ever), the job, its retry counter and in-progress key go,
# and it leaves the queue and (on a worker that aborts jobs: nothing else reads it) the
# abort set; else (a retry) the in-progress key goes and the job's score moves by `incr
# score` (if any). A cron job keeps its in-progress key for `keep in-progress` ms instead.
# KEYS in-progress, queue, abort, result, retry, job
# ARGV job id, finish ('1'/'0'), result ('' none), result px ('' for ever), incr score
# ('' none), keep in-progress ms ('' none), abort set ('1'/'0')
FINISH_LUA = """
local delete = {}
if ARGV[6] == '' then
  delete[1] = KEYS[1]
else
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
if ARGV[2] == '1' then
  if ARGV[3] ~= '' then
    if ARGV[4] == '' then
      redis.call('SET', KEYS[4], ARGV[3])
    else
      redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[4])
    end
  end
  delete[#delete + 1] = KEYS[5]
  delete[#delete + 1] = KEYS[6]
  if ARGV[7] == '1' then redis.call('ZREM', KEYS[3], ARGV[1]) end
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif ARGV[5] ~= '' then
  redis.call('ZINCRBY', KEYS[2], ARGV[5], ARGV[1])
end
if #delete > 0 then redis.call('DEL', unpack(delete)) end
return 1
"""


# The ctx key of a job's finish (a `store.runs.Rider` of `finish_commands`, for a job
# that is not a cron job): a job function may have a script of its own that records the
# job's outcome run it (a run's end). Once it is confirmed, the job is finished,
# with no result kept, and the worker does not finish it again.
JOB_FINISH = "job_finish"

# The ctx key of what a job's pick started for it (`PickStart.picked`: a turn's run),
# for the job function to take (setting its `used`) before anything else; a job that
# never takes it has it undone by the worker (`PickStart.unused`).
JOB_START = "job_start"

# The pick script's reply for a job that some worker has in progress.
RUNNING = -2


@dataclass(frozen=True, slots=True)
class Picked:
    """A job this worker has just marked in progress, with what running it needs."""

    score: int
    payload: bytes | None  # the job's bytes; None when its key is gone (expired)
    job_try: int  # its try counter, this pick counted (arq's job_try)
    aborted: bool  # it was in arq's abort set (only read with allow_abort_jobs)
    broken: bool  # its job or retry key holds something that is not arq's
    read: bytes | None = None  # the value of the key the pick also read (None: none)
    start: Any = None  # the reply of the start the pick tried (None: it tried none)

    @classmethod
    def from_reply(cls, reply: Any) -> Picked | None:
        """The pick script's reply, or None when the job was not picked."""
        if not isinstance(reply, list) or len(reply) not in (5, 6, 7):
            return None
        score, payload, job_try, aborted, broken = reply[:5]
        read = reply[5] if len(reply) >= 6 else None
        return cls(
            score=int(float(score)),
            payload=payload if isinstance(payload, bytes) else None,
            job_try=int(job_try),
            aborted=bool(aborted),
            broken=bool(broken),
            read=read if isinstance(read, bytes) else None,
            start=reply[6] if len(reply) == 7 else None,
        )


def finish_args(
    job_id: str,
    *,
    finish: bool,
    result: bytes | None,
    result_ms: int | None,
    incr_score: int | None,
    keep_in_progress_ms: int | None,
    aborts: bool,
) -> list[Any]:
    """The ARGV of FINISH_LUA (`result_ms` None: keep the result for ever; `aborts`:
    the worker aborts jobs, so the job leaves arq's abort set too)."""
    return [
        job_id,
        "1" if finish else "0",
        result or b"",
        "" if result_ms is None else str(max(1, result_ms)),
        "" if not incr_score else str(incr_score),
        "" if keep_in_progress_ms is None else str(keep_in_progress_ms),
        "1" if aborts else "0",
    ]


def finish_commands(
    job_id: str, *, queue: str, abort_set: str | None, keys: list[str]
) -> list[tuple[Any, ...]]:
    """FINISH_LUA's effects for a job that finished with no result to keep, as commands
    for another script to run (a run's end, `Rider`): it leaves the queue (and the
    abort set, `abort_set` None: not read), then its keys (`keys`: in-progress, retry,
    job) go."""
    commands: list[tuple[Any, ...]] = [("ZREM", queue, job_id)]
    if abort_set is not None:
        commands.append(("ZREM", abort_set, job_id))
    commands.append(("DEL", *keys))
    return commands
