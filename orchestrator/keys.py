"""Every Redis key, stream, channel and queue name the orchestrator uses, and nowhere else.

With the default prefix `orc` (`Keys(prefix=...)` changes it for every name at once):

Per session (all carry the `{session_id}` hash tag, so one session stays on one
cluster slot and MULTI/EXEC over its keys is allowed):

    orc:{S}:events              stream: the session's events, responses and run status entries
    orc:{S}:seqs                hash: agent_call_id -> last published event_seq
    orc:{S}:publishers          hash: publisher id -> last delivered batch (exactly-once retries)
    orc:{S}:abort               string: JSON {reason, at}; present = abort requested
    orc:{S}:ckpt:<agent_call>   hash: fenced checkpoint of one agent call (attempt, state)
    orc:{S}:fence:<run_id>      string: the attempt that owns the run's writes (zombie fence)
    orc:{S}:forks               hash: the session's fork counter
    orc:{S}:children:<call>     list: fork ids spawned by one agent call, in spawn order
    orc:{S}:spawns:<call>       hash: one agent call's spawn key -> fork number

Runs (share the `{runs}` tag so a record and its indexes change in one MULTI/EXEC):

    orc:{runs}:run:<run_id>     string: RunRecord JSON
    orc:{runs}:index            zset: run_id -> submitted_at (ms), every run
    orc:{runs}:status:<status>  zset: run_id -> submitted_at (ms), runs in that status
    orc:{runs}:expiring         zset: run_id -> expiry (ms), records given a TTL
    orc:{runs}:awaited:<run_id> set: fork run ids a waiting run still waits for

Leases (share the `{leases}` tag):

    orc:{leases}:deadlines      zset: run_id -> lease deadline (ms)
    orc:{leases}:owner:<run_id> hash: attempt, worker, fence of one run's lease

Memory (one hash per memory key, tagged by the key):

    orc:mem:{M}                 hash: messages, summary, pending, experiences of key M

Process-wide:

    orc:queue                   the arq queue
    orc:wake                    pub/sub channel that wakes idle workers
    orc:workers                 hash: worker_id -> heartbeat JSON

Session ids and agent call ids become part of hash-tagged names, so they may not contain
`{` or `}` (a ValueError says so); memory keys and run ids may be any string.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


def _tag_part(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "{" in value or "}" in value:
        raise ValueError(f"{what} may not contain '{{' or '}}': {value!r}")
    return value


@dataclass(frozen=True)
class Keys:
    """Names every key from one prefix; pass one instance to every adapter."""

    prefix: str = "orc"

    # -- per session ------------------------------------------------------------------

    def _session(self, session_id: str) -> str:
        return f"{self.prefix}:{{{_tag_part(session_id, 'session_id')}}}"

    def events(self, session_id: str) -> str:
        """The session's event stream."""
        return f"{self._session(session_id)}:events"

    def seqs(self, session_id: str) -> str:
        """Hash agent_call_id -> last published event_seq."""
        return f"{self._session(session_id)}:seqs"

    def publishers(self, session_id: str) -> str:
        """Hash publisher id -> number of its last delivered batch."""
        return f"{self._session(session_id)}:publishers"

    def abort(self, session_id: str) -> str:
        """The session's abort flag."""
        return f"{self._session(session_id)}:abort"

    def checkpoint(self, session_id: str, agent_call_id: str) -> str:
        """One agent call's fenced checkpoint."""
        call = _tag_part(agent_call_id, "agent_call_id")
        return f"{self._session(session_id)}:ckpt:{call}"

    def run_fence(self, session_id: str, run_id: str) -> str:
        """The attempt that owns a run's stream and checkpoint writes: an older attempt
        (replaced after its lease lapsed) is refused."""
        return f"{self._session(session_id)}:fence:{_tag_part(run_id, 'run_id')}"

    def forks(self, session_id: str) -> str:
        """The session's fork counter (fork ids are numbered per session)."""
        return f"{self._session(session_id)}:forks"

    def spawns(self, session_id: str, agent_call_id: str) -> str:
        """One agent call's spawn key -> fork number (what makes spawns idempotent)."""
        call = _tag_part(agent_call_id, "agent_call_id")
        return f"{self._session(session_id)}:spawns:{call}"

    def children(self, session_id: str, agent_call_id: str) -> str:
        """The fork ids one agent call has spawned, in order."""
        call = _tag_part(agent_call_id, "agent_call_id")
        return f"{self._session(session_id)}:children:{call}"

    # -- runs ---------------------------------------------------------------------------

    def run(self, run_id: str) -> str:
        """One run's record."""
        return f"{self.prefix}:{{runs}}:run:{run_id}"

    def runs_index(self) -> str:
        """Zset of every run id, scored by submission time (ms)."""
        return f"{self.prefix}:{{runs}}:index"

    def runs_by_status(self, status: str) -> str:
        """Zset of the run ids currently in `status`, scored by submission time (ms)."""
        return f"{self.prefix}:{{runs}}:status:{status}"

    def awaited(self, run_id: str) -> str:
        """Set of the fork run ids a run suspended in a gather still waits for."""
        return f"{self.prefix}:{{runs}}:awaited:{run_id}"

    def runs_expiring(self) -> str:
        """Zset of run ids whose record was given a TTL, scored by expiry time (ms)."""
        return f"{self.prefix}:{{runs}}:expiring"

    # -- leases and workers -----------------------------------------------------------

    def leases(self) -> str:
        """Zset run_id -> lease deadline (ms)."""
        return f"{self.prefix}:{{leases}}:deadlines"

    def lease(self, run_id: str) -> str:
        """Hash holding the owner (attempt, worker) and fence of one run's lease."""
        return f"{self.prefix}:{{leases}}:owner:{run_id}"

    def workers(self) -> str:
        """Hash worker_id -> heartbeat JSON."""
        return f"{self.prefix}:workers"

    # -- memory -----------------------------------------------------------------------

    def memory(self, memory_key: str) -> str:
        """The SelfReference memory record of one memory key."""
        return f"{self.prefix}:mem:{{{memory_key}}}"

    # -- queue and wake-ups -----------------------------------------------------------

    def queue(self) -> str:
        """The arq queue name."""
        return f"{self.prefix}:queue"

    def wake(self) -> str:
        """Pub/sub channel that wakes idle workers when a job is enqueued."""
        return f"{self.prefix}:wake"

    def pattern(self) -> str:
        """A SCAN MATCH pattern for every key under this prefix (tests, maintenance)."""
        escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}:*"
