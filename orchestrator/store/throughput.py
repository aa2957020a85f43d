"""Runs that ended recently, for throughput charts, from the run indexes alone.

A run's record gets its retention TTL the moment the run ends (`RunStore.expire`, called
by `lifecycle.announce_end`), and `{runs}:expiring` scores it `end + run_retention_s` (ms).
So the index already says when every retained run ended: `ended_since` reads that range
and tells completed from failed by the status indexes. No counter or time series has to
be written on the hot path, nothing new has to expire, and the figures cover every
process that ended runs, whichever API instance asks.

It assumes what every process of one deployment already shares: the same
`run_retention_s` (a reader with another retention sees the ends shifted by the difference).
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.keys import Keys
from orchestrator.runs import RunStatus
from orchestrator.store._codec import text
from orchestrator.store.connection import Redis, translate_errors

__all__ = ["Ended", "RecentEnds"]

_ENDED = (RunStatus.COMPLETED, RunStatus.ERROR, RunStatus.ABORTED)


@dataclass(frozen=True)
class Ended:
    run_id: str
    # When it ended (epoch seconds).
    at: float
    status: RunStatus | None

    @property
    def is_fork(self) -> bool:
        # Fork run ids are "<root run id>.fork_N" (runs.fork_run_id).
        return ".fork_" in self.run_id


class RecentEnds:
    def __init__(self, redis: Redis, keys: Keys, *, retention_s: float) -> None:
        self._redis = redis
        self._keys = keys
        self._retention_ms = retention_s * 1000.0

    async def since(self, start: float, *, limit: int = 100_000) -> list[Ended]:
        """The runs (roots and forks) that ended at or after `start` (epoch seconds),
        oldest first, at most `limit` of them."""
        low = start * 1000.0 + self._retention_ms
        async with translate_errors("recent ends"):
            raw = await self._redis.zrangebyscore(
                self._keys.runs_expiring(), low, "+inf", start=0, num=limit, withscores=True
            )
            if not raw:
                return []
            ids = [text(member) for member, _ in raw]
            async with self._redis.pipeline(transaction=False) as pipe:
                for status in _ENDED:
                    pipe.zmscore(self._keys.runs_by_status(status), ids)
                members = await pipe.execute()
        ended = []
        for index, (run_id, (_, score)) in enumerate(zip(ids, raw, strict=True)):
            found = [
                s for s, scores in zip(_ENDED, members, strict=True) if scores[index] is not None
            ]
            at = (float(score) - self._retention_ms) / 1000.0
            ended.append(Ended(run_id, at, found[0] if found else None))
        return ended
