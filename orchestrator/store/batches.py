"""Batch records in Redis: a batch's spec, its items, their results and its counters,
and the arq jobs (one per item) that run them.

Everything here is JSON text and integers; `orchestrator.deluge.batch` validates it
(Redis contents are untrusted). A result is written once per item (`HSETNX`), and the
counters move in the same script, so an item run twice (a worker died after recording
it) is counted once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from arq.constants import job_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from orchestrator.keys import Keys
from orchestrator.store import jsonserial
from orchestrator.store.connection import translate_errors

RUN_BATCH_ITEM = "run_batch_item"
DEFAULT_BATCH_RETENTION_S = 86_400
_ITEMS_PER_WRITE = 500

# KEYS meta, results; ARGV index, result, failed (0/1), input, output, cost
_RECORD = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
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


def item_job_id(batch_id: str, index: int) -> str:
    """The arq job id of one item (deterministic: submitting twice queues it once)."""
    return f"batch:{batch_id}:{index}"


class BatchStore:
    def __init__(self, redis: Any, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._record = redis.register_script(_RECORD)

    async def create(
        self,
        batch_id: str,
        spec_json: str,
        items: Sequence[str],
        *,
        retention_s: int = DEFAULT_BATCH_RETENTION_S,
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
                },
            )
            for start in range(0, len(items), _ITEMS_PER_WRITE):
                chunk = items[start : start + _ITEMS_PER_WRITE]
                pipe.hset(stored, mapping={str(start + i): item for i, item in enumerate(chunk)})
            for key in (meta, stored, self._keys.batch_results(batch_id)):
                pipe.expire(key, retention_s)
            await pipe.execute()

    async def enqueue(self, batch_id: str, indexes: Sequence[int]) -> None:
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
                    jid = item_job_id(batch_id, index)
                    payload = {"batch_id": batch_id, "index": index}
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
                keys=[self._keys.batch_meta(batch_id), self._keys.batch_results(batch_id)],
                args=[index, result_json, int(failed), input_tokens, output_tokens, repr(cost)],
            )
        return bool(written)

    async def counters(self, batch_id: str) -> dict[str, str]:
        """The batch's counters as stored (empty when the batch is unknown or expired)."""
        async with translate_errors("read batch progress"):
            raw = await self._redis.hgetall(self._keys.batch_meta(batch_id))
        return {_text(k) or "": _text(v) or "" for k, v in raw.items() if _text(k) != "spec"}

    async def results(self, batch_id: str) -> dict[int, str]:
        async with translate_errors("read batch results"):
            raw = await self._redis.hgetall(self._keys.batch_results(batch_id))
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
