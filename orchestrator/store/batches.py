"""Batch records in Redis: a batch's spec, its items, their results and its counters,
and the arq jobs (one per item) that run them.

Everything here is JSON text and integers; `orchestrator.deluge.batch` validates it
(Redis contents are untrusted). A result is written once per item (`HSETNX`), and the
counters move in the same script, so an item run twice (a worker died after recording
it) is counted once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from orchestrator.keys import Keys
from orchestrator.store import jsonserial
from orchestrator.store._codec import ascii_digits
from orchestrator.store.connection import translate_errors

RUN_BATCH_ITEM = "run_batch_item"
RECENT_BATCHES = 100
DEFAULT_BATCH_RETENTION_S = 86_400
_ITEMS_PER_WRITE = 500
# The fields of a batch's meta hash that `counters` reads (all but the spec).
_COUNTERS = (
    "total", "done", "failed", "input_tokens", "output_tokens", "cost", "created_at", "tenant"
)  # fmt: skip

# KEYS meta, results, claims; ARGV index, result, failed (0/1), input, output, cost.
# The results expire with the batch's meta (the hash did not exist when it was created).
_RECORD = """
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then ttl = 86400000 end
redis.call('PEXPIRE', KEYS[2], ttl)
if ARGV[3] == '1' then
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
else
  redis.call('HINCRBY', KEYS[1], 'done', 1)
end
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[5])
redis.call('HINCRBYFLOAT', KEYS[1], 'cost', ARGV[6])
return 1
"""


def _claim_lua(claims: str, meta: str, index: str, claim: str) -> str:
    """Lua that writes a claim; the claims expire with the batch's meta."""
    return f"""
redis.call('HSET', {claims}, {index}, {claim})
local claims_ttl = redis.call('PTTL', {meta})
if claims_ttl <= 0 then claims_ttl = 86400000 end
redis.call('PEXPIRE', {claims}, claims_ttl)
"""


# KEYS claims, meta; ARGV index, claim.
_CLAIM = _claim_lua("KEYS[1]", "KEYS[2]", "ARGV[1]", "ARGV[2]") + "return 1\n"

# The worker's job pick (workers/arq_jobs.py) claims a batch item in the same script
# that marks its job in progress: KEYS[6] claims, KEYS[7] meta; ARGV[6] index, ARGV[7]
# claim. (Claiming later, from the job, left a gap: a worker dying between the pick and
# the claim left the item in progress with no claim for the sweeper to see.)
PICK_CLAIM_LUA = _claim_lua("KEYS[6]", "KEYS[7]", "ARGV[6]", "ARGV[7]")

# KEYS claims; ARGV index, the claim read. Takes the claim away if it is unchanged (so of
# several sweepers that found it, exactly one re-queues the item).
_TAKE_CLAIM = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


def item_job_id(batch_id: str, index: int, run: int = 1) -> str:
    """The arq job id of one run of an item (deterministic: submitting twice, or two
    sweepers re-queueing it, queue it once)."""
    return f"batch:{batch_id}:{index}" if run == 1 else f"batch:{batch_id}:{index}:r{run}"


def parse_item_job_id(job_id: str) -> tuple[str, int, int] | None:
    """`(batch_id, index, run)` of an item's job id, None for any other job id."""
    if not job_id.startswith("batch:"):
        return None
    parts = job_id.split(":")
    if len(parts) == 4 and parts[3].startswith("r") and ascii_digits(parts[3][1:]):
        run = int(parts[3][1:])
    elif len(parts) == 3:
        run = 1
    else:
        return None
    if not parts[1] or not ascii_digits(parts[2]) or run < 1:
        return None
    return parts[1], int(parts[2]), run


class BatchStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._record = redis.register_script(_RECORD)
        self._take_claim = redis.register_script(_TAKE_CLAIM)
        self._claim = redis.register_script(_CLAIM)

    async def create(
        self,
        batch_id: str,
        spec_json: str,
        items: Sequence[str],
        *,
        retention_s: int = DEFAULT_BATCH_RETENTION_S,
        tenant: str | None = None,
    ) -> None:
        meta = self._keys.batch_meta(batch_id)
        stored = self._keys.batch_items(batch_id)
        async with translate_errors("create batch"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(
                meta,
                mapping={
                    "spec": spec_json,
                    "total": len(items),
                    "done": 0,
                    "failed": 0,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "cost": 0,
                    "created_at": time.time(),
                    "tenant": tenant or "",  # "" = the operator's batch
                },
            )
            for start in range(0, len(items), _ITEMS_PER_WRITE):
                chunk = items[start : start + _ITEMS_PER_WRITE]
                pipe.hset(stored, mapping={str(start + i): item for i, item in enumerate(chunk)})
            for key in (meta, stored, self._keys.batch_results(batch_id)):
                pipe.expire(key, retention_s)
            now_ms = int(time.time() * 1000)
            for index_key in (self._keys.batches_active(), self._keys.batches_recent()):
                pipe.zadd(index_key, {batch_id: now_ms})
                pipe.expire(index_key, retention_s)
            pipe.zremrangebyrank(self._keys.batches_recent(), 0, -RECENT_BATCHES - 1)
            await pipe.execute()

    async def enqueue(self, batch_id: str, indexes: Sequence[int], *, run: int = 1) -> None:
        """Queue one arq job per item (JSON envelopes, as `ArqRedis.enqueue_job` writes
        them, but pipelined: a batch's job ids are new, so arq's per-job existence check
        and transaction are not needed) and wake idle workers."""
        queue = self._keys.queue()
        expires_ms = getattr(self._redis, "expires_extra_ms", 86_400_000)
        async with translate_errors("enqueue batch"):
            for start in range(0, len(indexes), _ITEMS_PER_WRITE):
                now = timestamp_ms()
                pipe = self._redis.pipeline(transaction=False)
                for index in indexes[start : start + _ITEMS_PER_WRITE]:
                    jid = item_job_id(batch_id, index, run)
                    payload = {"batch_id": batch_id, "index": index, "run": run}
                    envelope = serialize_job(
                        RUN_BATCH_ITEM, (payload,), {}, None, now, serializer=jsonserial.dumps
                    )
                    pipe.psetex(job_key_prefix + jid, expires_ms, envelope)
                    pipe.zadd(queue, {jid: now})
                await pipe.execute()
            await self._redis.publish(self._keys.wake(), f"batch:{batch_id}")

    async def spec(self, batch_id: str) -> str | None:
        async with translate_errors("read batch"):
            raw = await self._redis.hget(self._keys.batch_meta(batch_id), "spec")
        return _text(raw)

    async def item(self, batch_id: str, index: int) -> str | None:
        async with translate_errors("read batch item"):
            raw = await self._redis.hget(self._keys.batch_items(batch_id), str(index))
        return _text(raw)

    async def record(
        self,
        batch_id: str,
        index: int,
        result_json: str,
        *,
        failed: bool,
        input_tokens: int,
        output_tokens: int,
        cost: float,
    ) -> bool:
        """Store an item's result and count it; False if it had one already."""
        async with translate_errors("record batch result"):
            written = await self._record(
                keys=[
                    self._keys.batch_meta(batch_id),
                    self._keys.batch_results(batch_id),
                    self._keys.batch_claims(batch_id),
                ],
                args=[index, result_json, int(failed), input_tokens, output_tokens, repr(cost)],
            )
        return bool(written)

    async def claim(self, batch_id: str, index: int, claim_json: str) -> None:
        """Note which worker runs an item (what a sweeper checks when workers die)."""
        keys = [self._keys.batch_claims(batch_id), self._keys.batch_meta(batch_id)]
        async with translate_errors("claim batch item"):
            await self._claim(keys=keys, args=[index, claim_json])

    def pick_claim(self, job_id: str, worker_id: str) -> tuple[list[str], list[str]] | None:
        """The extra keys and args of `PICK_CLAIM_LUA` that claim an item for `worker_id`
        as its job is picked; None when `job_id` is not a batch item's."""
        parsed = parse_item_job_id(job_id)
        if parsed is None:
            return None
        batch_id, index, run = parsed
        claim = json.dumps({"worker": worker_id, "run": run, "at": time.time()})
        keys = [self._keys.batch_claims(batch_id), self._keys.batch_meta(batch_id)]
        return keys, [str(index), claim]

    async def in_progress(self, batch_id: str, runs: dict[int, int]) -> set[int]:
        """Of `runs` (item index -> run), the items whose job arq has in progress."""
        if not runs:
            return set()
        indexes = sorted(runs)
        async with translate_errors("read batch jobs"):
            pipe = self._redis.pipeline(transaction=False)
            for index in indexes:
                pipe.exists(in_progress_key_prefix + item_job_id(batch_id, index, runs[index]))
            found = await pipe.execute()
        return {index for index, exists in zip(indexes, found, strict=True) if exists}

    async def claims(self, batch_id: str) -> dict[int, str]:
        async with translate_errors("read batch claims"):
            raw = await self._redis.hgetall(self._keys.batch_claims(batch_id))
        return _by_index(raw)

    async def take_claim(self, batch_id: str, index: int, claim_json: str) -> bool:
        """Remove a claim if it is still the one read; True for the caller that did."""
        async with translate_errors("take batch claim"):
            taken = await self._take_claim(
                keys=[self._keys.batch_claims(batch_id)], args=[index, claim_json]
            )
        return bool(taken)

    async def active(self) -> list[str]:
        async with translate_errors("list active batches"):
            raw = await self._redis.zrange(self._keys.batches_active(), 0, -1)
        return [t for t in (_text(item) for item in raw) if t]

    async def recent(self, limit: int = RECENT_BATCHES) -> list[str]:
        """The latest batches submitted, newest first."""
        async with translate_errors("list recent batches"):
            raw = await self._redis.zrevrange(self._keys.batches_recent(), 0, limit - 1)
        return [t for t in (_text(item) for item in raw) if t]

    async def forget(self, batch_id: str) -> None:
        """The batch finished or expired: no more sweeping for it."""
        async with translate_errors("forget batch"):
            await self._redis.zrem(self._keys.batches_active(), batch_id)

    async def counters(self, batch_id: str) -> dict[str, str]:
        """The batch's counters as stored (empty when the batch is unknown or expired)."""
        return (await self.counters_many([batch_id]))[0]

    async def counters_many(self, batch_ids: Sequence[str]) -> list[dict[str, str]]:
        """`counters` of each batch, in one round trip (the spec is not read)."""
        async with translate_errors("read batch progress"):
            pipe = self._redis.pipeline(transaction=False)
            for batch_id in batch_ids:
                pipe.hmget(self._keys.batch_meta(batch_id), _COUNTERS)
            replies = await pipe.execute() if batch_ids else []
        return [
            {
                name: text
                for name, raw in zip(_COUNTERS, values, strict=True)
                if (text := _text(raw)) is not None
            }
            for values in replies
        ]

    async def results(self, batch_id: str) -> dict[int, str]:
        async with translate_errors("read batch results"):
            raw = await self._redis.hgetall(self._keys.batch_results(batch_id))
        return _by_index(raw)


def _by_index(raw: dict[Any, Any]) -> dict[int, str]:
    found: dict[int, str] = {}
    for key, value in raw.items():
        try:
            found[int(_text(key) or "")] = _text(value) or ""
        except ValueError:
            continue  # not ours: ignored
    return found


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)
