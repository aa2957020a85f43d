"""The arq queue, seen from the submitting side: enqueue a run attempt and wake workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from orchestrator.keys import Keys
from orchestrator.runs import RunRequest
from orchestrator.store._codec import ascii_digits
from orchestrator.store.connection import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    connect_arq,
    run_scripts,
    translate_errors,
)

# How many jobs at the queue's head `depth` checks for a worker running them, and how many
# keys one EXISTS names.
DEPTH_SCAN = 10_000
_EXISTS_CHUNK = 1_000

# arq's enqueue_job (WATCH job; EXISTS job, result; MULTI PSETEX ZADD EXEC) as one atomic
# script for a batch of jobs, plus one wake-up (`wake_hint`): the same keys and the same
# job bytes as arq writes. A job id arq already holds (its job or its result) is left alone.
# KEYS: queue, wake channel, then job and result key per job
# ARGV: expires ms, then job bytes, score and job id per job. Reply: how many were queued.
_ENQUEUE_LUA = """
local scored = {}
for j = 1, (#KEYS - 2) / 2 do
  local k, a = 2 * j + 1, 3 * j - 1
  if redis.call('EXISTS', KEYS[k], KEYS[k + 1]) == 0 then
    redis.call('PSETEX', KEYS[k], ARGV[1], ARGV[a])
    scored[#scored + 1] = ARGV[a + 1]
    scored[#scored + 1] = ARGV[a + 2]
  end
end
if #scored == 0 then return 0 end
redis.call('ZADD', KEYS[1], unpack(scored))
if #scored == 2 then
  redis.call('PUBLISH', KEYS[2], scored[2])
else
  redis.call('PUBLISH', KEYS[2], scored[2] .. ' +')
end
return #scored / 2
"""
# A wake-up names the first job its enqueue queued; ' +' after it: and more besides.
_MORE = b" +"
# Jobs per script call (Lua's unpack() has a bounded stack).
_CHUNK = 256
# The queue score of a job put at the front: past every real enqueue time, and not 0
# (arq's own pick takes a zero score for a job that left the queue).
_FRONT_SCORE_MS = 1.0

RUN_TURN = "run_turn"


def job_id(run_id: str, attempt: int, segment: int = 0) -> str:
    """Deterministic arq job id: one job per attempt (and per resumed segment), so a retry
    never collides with the result key arq keeps for an earlier one, and two wake-ups of
    the same waiting run enqueue it once (arq refuses a job id it already holds)."""
    return f"{run_id}:{attempt}" if segment == 0 else f"{run_id}:{attempt}:{segment}"


def wake_hint(message: object) -> tuple[bytes | None, bool]:
    """What a wake-up on `Keys.wake()` says: `(job id, sole)`, the first job its enqueue
    queued and whether it was the only one; `(None, False)` when it names no job (a
    batch's wake-up, anything else)."""
    if not isinstance(message, bytes) or message.startswith(b"batch:"):
        return None, False
    sole = not message.endswith(_MORE)
    job = message if sole else message[: -len(_MORE)]
    return (job, sole) if 0 < len(job) <= 200 and b" " not in job else (None, False)


def run_of_job(jid: str) -> str | None:
    """The run id in a job id `job_id` made, None if `jid` is not one. A guess for a run
    id with colons in it ("a:1:2" is run "a", attempt 1, segment 2, never run "a:1")."""
    head, _, last = jid.rpartition(":")
    if not head or not ascii_digits(last):
        return None
    run_id, _, attempt = head.rpartition(":")
    return run_id if run_id and ascii_digits(attempt) else head


def turn_of_job(jid: str) -> tuple[str, int, int] | None:
    """`(run id, attempt, segment)` of a turn's job id (`job_id`), guessed as `run_of_job`
    does; None if `jid` is not one. Whoever acts on the guess checks it (the job's
    payload names its run)."""
    run_id = run_of_job(jid)
    if run_id is None:
        return None
    numbers = jid[len(run_id) + 1 :].split(":")
    attempt, segment = int(numbers[0]), int(numbers[1]) if len(numbers) == 2 else 0
    return (run_id, attempt, segment) if job_id(run_id, attempt, segment) == jid else None


def turn_job_head(run_id: str) -> str:
    """How the payload of a turn's job for `run_id` begins (`JobQueue.enqueue_calls`: arq's
    envelope in `jsonserial`, first try unset, the request's fields in their order), up to
    the first quote of its session id, for a run id JSON writes as it is."""
    return f'{{"t":null,"f":"{RUN_TURN}","a":[{{"v":1,"run_id":"{run_id}","session_id":"'


def arq_keys(jid: str) -> list[str]:
    """arq's own keys of one job (named by arq, outside our prefix): job, result,
    in-progress and retry. They expire; tests and the bench delete them early."""
    return [
        p + jid
        for p in (job_key_prefix, result_key_prefix, in_progress_key_prefix, retry_key_prefix)
    ]


class JobQueue:
    def __init__(self, arq: ArqRedis, keys: Keys) -> None:
        self._arq = arq
        self._keys = keys
        self._script = arq.register_script(_ENQUEUE_LUA)

    @property
    def redis(self) -> ArqRedis:
        """The client the queue enqueues with (to batch `enqueue_call`s on)."""
        return self._arq

    async def enqueue(self, request: RunRequest) -> str:
        """Queue one attempt (or resumed segment) of a run and wake idle workers.
        Returns the arq job id; enqueueing a job id arq already holds does nothing."""
        async with translate_errors("enqueue run"):
            await run_scripts(self._arq, [self.enqueue_call(request)])
        return job_id(request.run_id, request.attempt, request.segment)

    def enqueue_call(self, request: RunRequest) -> tuple[Any, list[str], list[Any]]:
        """The script call `enqueue` makes, for a caller batching it with others
        (`connection.run_scripts`): one round trip for many."""
        (call,) = self.enqueue_calls([request])
        return call

    def enqueue_calls(
        self, requests: Sequence[RunRequest], *, front: bool = False
    ) -> list[tuple[Any, list[str], list[Any]]]:
        """Script calls that enqueue all of `requests` (one per `_CHUNK` jobs, each
        atomic, with one wake-up), for `connection.run_scripts`.

        `front`: ahead of every job queued or in progress (the resumed segments of an
        aborted tree, which end at once). arq keeps a job in the queue while it runs and
        a worker tries the ids in score order, each in-progress one a refused pick, so a
        job queued behind a tree's running forks waits for one pick per fork."""
        now = timestamp_ms()
        # Scores rise in the batch's order (all within the last millisecond), so workers
        # take its jobs first come first served, not by job id (equal scores sort so).
        step = 1.0 / max(1, len(requests))
        base = _FRONT_SCORE_MS if front else now - 1
        calls: list[tuple[Any, list[str], list[Any]]] = []
        for start in range(0, len(requests), _CHUNK):
            keys = [self._keys.queue(), self._keys.wake()]
            args: list[Any] = [str(self._arq.expires_extra_ms)]
            for i, request in enumerate(requests[start : start + _CHUNK], start):
                jid = job_id(request.run_id, request.attempt, request.segment)
                job = serialize_job(
                    RUN_TURN,
                    (request.model_dump(mode="json"),),
                    {},
                    None,
                    now,
                    serializer=self._arq.job_serializer,
                )
                keys += [job_key_prefix + jid, result_key_prefix + jid]
                args += [job, repr(base + i * step), jid]
            calls.append((self._script, keys, args))
        return calls

    async def in_progress(self, job_ids: Sequence[str]) -> set[str]:
        """Those of `job_ids` that a worker has marked in progress (picked)."""
        if not job_ids:
            return set()
        async with translate_errors("jobs in progress"):
            pipe = self._arq.pipeline(transaction=False)
            for jid in job_ids:
                pipe.exists(in_progress_key_prefix + jid)
            found = await pipe.execute()
        return {jid for jid, exists in zip(job_ids, found, strict=True) if exists}

    async def claim_recovery(self, job_id: str, ttl_s: float) -> bool:
        """True for the one caller (for `ttl_s`) that is to re-queue this job."""
        key = self._keys.job_recovery(job_id)
        async with translate_errors("claim job recovery"):
            taken = await self._arq.set(key, b"1", nx=True, px=max(1, int(ttl_s * 1000)))
        return bool(taken)

    async def discard(self, run_id: str, attempt: int, segment: int = 0) -> None:
        """Drop an attempt's arq job (its worker died): arq would otherwise rerun it when
        its in-progress key expires, long after we resumed the run elsewhere."""
        jid = job_id(run_id, attempt, segment)
        async with translate_errors("discard job"):
            pipe = self._arq.pipeline(transaction=True)
            pipe.zrem(self._keys.queue(), jid)
            pipe.delete(job_key_prefix + jid, in_progress_key_prefix + jid, retry_key_prefix + jid)
            await pipe.execute()

    async def depth(self) -> int:
        """Run attempts waiting for a worker: queued jobs (due or deferred) that no worker
        is running. arq keeps a job in its queue until the job returns, so the queue's size
        counts running jobs too; those are the ones with an in-progress key. Workers pick
        jobs lowest score first, so running jobs sit at the queue's head: the first
        `DEPTH_SCAN` are checked (two round trips), and a running job further back (a queue
        over `DEPTH_SCAN` deep behind older running ones) is counted as waiting."""
        queue = self._keys.queue()
        async with translate_errors("queue depth"):
            async with self._arq.pipeline(transaction=False) as pipe:
                pipe.zcard(queue)
                pipe.zrange(queue, 0, DEPTH_SCAN - 1)
                size, head = await pipe.execute()
            if not head:
                return int(size)
            async with self._arq.pipeline(transaction=False) as pipe:
                for i in range(0, len(head), _EXISTS_CHUNK):
                    chunk = head[i : i + _EXISTS_CHUNK]
                    pipe.exists(*(in_progress_key_prefix.encode() + jid for jid in chunk))
                running = sum(int(n) for n in await pipe.execute())
        return max(0, int(size) - running)


async def connect_queue(
    url: str,
    keys: Keys,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> ArqRedis:
    """A Redis client that can also enqueue arq jobs (JSON-serialized, never pickled),
    once Redis has answered a PING (`StoreUnavailable` if it does not within the timeouts).
    """
    pool = connect_arq(url, keys.queue(), timeout_s=timeout_s, connect_timeout_s=connect_timeout_s)
    try:
        async with translate_errors("connect"):
            await pool.ping()
    except BaseException:
        await pool.aclose()
        raise
    return pool
