"""Every Redis key, stream, channel and queue name the orchestrator uses, and nowhere else.

With the default prefix `orc` (`Keys(prefix=...)` changes it for every name at once):

Per session (all carry the `{session_id}` hash tag, so one session stays on one
cluster slot and MULTI/EXEC over its keys is allowed):

    orc:{S}:events              stream: the session's events, responses and run status entries
    orc:{S}:seqs                hash: agent_call_id -> last published event_seq, and
                                "batch:<publisher id>" -> its last delivered batch
                                (exactly-once retries)
    orc:{S}:publishers          hash: publisher id -> last delivered batch, where earlier
                                builds kept it (read by retries, no longer written)
    orc:{S}:abort               string: JSON {reason, at}; the whole session is to stop
                                (TTL 1 day; a later submit into the session clears it)
    orc:{S}:abort:<root_run>    string: JSON {reason, at}; one run and its forks are to stop
                                (TTL 1 day; never cleared: that run tree stays aborted)
    orc:{S}:owner               string: the tenant that started the session ("-": none);
                                TTL stream_retention_s, refreshed by every submit, and by
                                a run's end if it would expire before the stream (then a
                                little longer: up to a minute)
    orc:{S}:runs                zset: root run id -> submitted_at (ms), the session's runs
                                (what a session abort stops); TTL as the owner's, and
                                members older than run_retention_s are dropped on submit
    orc:{S}:ckpt:<agent_call>   hash: fenced checkpoint of one agent call (attempt, state)
    orc:{S}:fence:<run_id>      string: the attempt that owns the run's writes (zombie fence)
    orc:{S}:forks               hash: the session's fork counter; TTL run_retention_s
                                + 60 s from an allocation, pushed back (never shortened)
                                by a run's end past its record's and the stream's expiry,
                                so no fork number is handed out twice while they live
    orc:{S}:children:<call>     list: fork ids spawned by one agent call, in spawn order
    orc:{S}:spawns:<call>       hash: one agent call's spawn key -> fork number
    orc:{S}:journal:<name>      hash: a session journal (PyRepl's executed inputs): gen,
                                seq, stored, bytes, e:<n> entries; bounded (settings
                                journal_max_*), expiring journal_retention_s after its last
                                write

Runs (share the `{runs}` tag so a record and its indexes change in one MULTI/EXEC):

    orc:{runs}:run:<run_id>     string: RunRecord JSON
    orc:{runs}:index            zset: run_id -> submitted_at (ms), every run
    orc:{runs}:status:<status>  zset: run_id -> submitted_at (ms), runs in that status
    orc:{runs}:expiring         zset: run_id -> expiry (ms), records given a TTL
    orc:{runs}:awaited:<run_id> set: fork run ids a waiting run still waits for

Leases (share the `{leases}` tag):

    orc:{leases}:deadlines      zset: run_id -> lease deadline (ms)
    orc:{leases}:owner:<run_id> hash: attempt, worker, fence of one run's lease

Memory (one hash per memory record; a scope and its key inside the hash tag, so a record
stays on one slot). Workers always use the scoped names; the unscoped one is for a
`RedisMemoryStore` built without a scope (one process-wide scope chosen by its user):

    orc:selfref:{t<n>:<tenant>,s<n>:<session>,M}   session scope (the default)
    orc:selfref:{t<n>:<tenant>,*,M}                tenant scope (opt-in: shared by sessions)
    orc:mem:{M}                                    no scope
        hash: messages, rev, writers, summary, pending, experiences of memory key M;
        `t-` stands for "no tenant", <n> is the length of the part that follows it.
        Bounded (settings memory_max_*) and expiring memory_retention_s after its last
        write.

Batches (lm-deluge's client on the cluster; owner store/batches.py; all three share the
batch's hash tag and expire batch_retention_s after the batch was submitted):

    orc:{batch:<id>}:meta       hash: spec (BatchSpec JSON), total, done, failed,
                                input_tokens, output_tokens, cost, created_at
    orc:{batch:<id>}:items      hash: item index -> the item (OpenAI message list JSON)
    orc:{batch:<id>}:results    hash: item index -> APIResponse JSON (written once)
    orc:{batch:<id>}:claims     hash: item index -> {worker, run, at} while a worker runs it
                                (removed when its result is recorded)
    orc:batches:active          zset: batch id -> submitted at (ms), the batches whose lost
                                items the workers' sweepers look for; TTL
                                batch_retention_s, refreshed by every submit; finished and
                                expired batches are removed by the sweepers
    orc:batches:recent          zset: batch id -> submitted at (ms), the last 100 batches
                                (the dashboard's list); trimmed by every submit, TTL as
                                batches:active

Rate limits shared by every worker (owner store/rate_limits.py):

    orc:ratelimit:{<name>}      zset: "<request id>:<tokens>" -> sent at (ms, Redis TIME),
                                the requests of the last period; TTL one period,
                                refreshed by every request
    orc:ratelimit:{<name>}:tokens  string: the tokens of those requests; TTL one period,
                                refreshed by every call

Process-wide:

    orc:queue                   the arq queue
    orc:recovering:<job id>     string: the reaper that re-queues a job picked by a dead
                                worker (one of them: SET NX); TTL lease_ttl_s
    orc:wake                    pub/sub channel that wakes idle workers
    orc:run-ends                pub/sub channel: a run's id once its record is terminal
    orc:aborts                  pub/sub channel: an abort flag was just set
    orc:workers                 hash: worker_id -> heartbeat JSON
    orc:metrics:latency         hash: latency histogram buckets, sums and counts that
                                workers add to (a fixed set of fields); TTL 7 days,
                                refreshed by every worker's flush

Keys without a TTL (`Keys.bounded()`): process-wide indexes, each bounded by something
other than time, and kept so by every worker's reaper (`Reaper.tidy`, every
waiting_sweep_s):

    {runs}:index, {runs}:status:*   runs whose record still exists (running, or ended
                                    less than run_retention_s ago); entries of expired
                                    records are pruned
    {runs}:expiring                 the same runs, scored by expiry; pruned likewise
    {leases}:deadlines              runs holding a lease (running now)
    workers                         workers alive, or dead less than an hour
    queue                           jobs waiting to start (arq removes them as they start)

Per-run keys held without a TTL while their run is live (a lease owner while it is held
or parked, a run's checkpoint) get one when the run ends, whoever ends it. arq's own keys
(`arq:job:*`, `arq:result:*`, `arq:in-progress:*`, outside the prefix) expire: job keys
with the job timeout, results after an hour.

The benchmark (`BenchKeys`, under the unique prefix of one `orchestrator bench` run; all
deleted when it ends, by a SCAN of `pattern()`):

    <p>:..., <p>:noop:...       Keys of our workers and client, and of the no-op worker
    <p>:arq-queue               the stock arq worker's queue (the baseline)
    <p>:bench:starts-ours|arq   list: when each no-op job started
    <p>:raw-delivery, :raw-xadd streams of the raw XADD/XREAD baselines
    <p>:forks:...               the fork section's BenchKeys (arq-done, arq-warm: lists)

Session ids, agent call ids and tenants become part of hash-tagged names, so they may not
contain `{` or `}` (a ValueError says so); memory keys and run ids may be any string.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BenchKeys", "Keys"]


def _tag_part(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "{" in value or "}" in value:
        raise ValueError(f"{what} may not contain '{{' or '}}': {value!r}")
    return value


def _counted(label: str, value: str) -> str:
    return f"{label}{len(value)}:{value}"


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
        """Hash publisher id -> number of its last delivered batch, where older versions
        kept it (read by retries, no longer written: the seqs hash holds it now)."""
        return f"{self._session(session_id)}:publishers"

    def abort(self, session_id: str) -> str:
        """The session's abort flag (every run in the session stops)."""
        return f"{self._session(session_id)}:abort"

    def run_abort(self, session_id: str, root_run_id: str) -> str:
        """The abort flag of one run tree (a root run and its forks), in its session."""
        return f"{self._session(session_id)}:abort:{root_run_id}"

    def session_owner(self, session_id: str) -> str:
        """The tenant that owns the session."""
        return f"{self._session(session_id)}:owner"

    def session_runs(self, session_id: str) -> str:
        """Zset of the session's root run ids, scored by submission time (ms)."""
        return f"{self._session(session_id)}:runs"

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

    def journal(self, session_id: str, name: str) -> str:
        """A session journal: bounded records a tool keeps for the session (by name)."""
        return f"{self._session(session_id)}:journal:{_tag_part(name, 'journal name')}"

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

    def latencies(self) -> str:
        """Hash of the latency histograms every worker adds its observations to."""
        return f"{self.prefix}:metrics:latency"

    # -- memory -----------------------------------------------------------------------

    def memory(self, memory_key: str) -> str:
        """The SelfReference memory record of one memory key, outside any scope."""
        return f"{self.prefix}:mem:{{{memory_key}}}"

    def scoped_memory(self, memory_key: str, *, tenant: str | None, session_id: str | None) -> str:
        """The memory record of `memory_key` in a scope: one session of `tenant`, or (with
        `session_id` None) every session of `tenant`. None is the "no tenant" scope.

        Each part is length-prefixed, so no two scopes (or keys) can produce one name.
        """
        owner = "t-" if tenant is None else _counted("t", _tag_part(tenant, "tenant"))
        where = "*" if session_id is None else _counted("s", _tag_part(session_id, "session_id"))
        return f"{self.prefix}:selfref:{{{owner},{where},{memory_key}}}"

    # -- batches and shared rate limits ------------------------------------------------

    def _batch(self, batch_id: str) -> str:
        return f"{self.prefix}:{{batch:{_tag_part(batch_id, 'batch_id')}}}"

    def batch_meta(self, batch_id: str) -> str:
        """Hash: a batch's spec and its counters (total, done, failed, usage, cost)."""
        return f"{self._batch(batch_id)}:meta"

    def batch_items(self, batch_id: str) -> str:
        """Hash: item index -> the item's messages (JSON)."""
        return f"{self._batch(batch_id)}:items"

    def batch_results(self, batch_id: str) -> str:
        """Hash: item index -> the item's APIResponse (JSON), written once."""
        return f"{self._batch(batch_id)}:results"

    def batch_claims(self, batch_id: str) -> str:
        """Hash: item index -> the claim of the worker running it."""
        return f"{self._batch(batch_id)}:claims"

    def batches_active(self) -> str:
        """Zset: unfinished batches, by submission time (ms)."""
        return f"{self.prefix}:batches:active"

    def batches_recent(self) -> str:
        """Zset: the most recent batches (at most 100), by submission time (ms)."""
        return f"{self.prefix}:batches:recent"

    def rate_window(self, name: str) -> str:
        """Zset: the requests sent under one shared rate limit in the last period."""
        return f"{self.prefix}:ratelimit:{{{_tag_part(name, 'rate limit name')}}}"

    def rate_tokens(self, name: str) -> str:
        """String: the tokens of the requests in one shared rate limit's window."""
        return f"{self.rate_window(name)}:tokens"

    # -- queue and wake-ups -----------------------------------------------------------

    def queue(self) -> str:
        """The arq queue name."""
        return f"{self.prefix}:queue"

    def job_recovery(self, job_id: str) -> str:
        """String: taken (SET NX, short TTL) by the one reaper that re-queues this job."""
        return f"{self.prefix}:recovering:{job_id}"

    def wake(self) -> str:
        """Pub/sub channel that wakes idle workers when a job is enqueued."""
        return f"{self.prefix}:wake"

    def aborts(self) -> str:
        """Pub/sub channel (no key, nothing stored): an abort flag was just set
        (`{"session", "root"?}`); workers' `AbortWatcher`s fire at once (the poll of
        the flags stays as the fallback)."""
        return f"{self.prefix}:aborts"

    def run_ends(self) -> str:
        """Pub/sub channel (no key, nothing stored): a run's id once its record is terminal
        (`RunStore.end`); `Run.result()` waits on it (`store/ends.py`)."""
        return f"{self.prefix}:run-ends"

    def run_ended_records(self) -> str:
        """Pub/sub channel (no key, nothing stored): `"<run id>\\n<record JSON>"` once a
        run's record is terminal, the record it was just given, when it is small
        (`RunStore.end`, which names it `run_ends()` + ":records"), published just before
        the id on `run_ends()`. A waiter of the run takes the record from it instead of
        reading it (`store/ends.py`); older clients, listening to `run_ends()` only, are
        woken by the id as before."""
        return f"{self.run_ends()}:records"

    def bounded(self) -> frozenset[str]:
        """The keys written without a TTL, each bounded otherwise (module docstring)."""
        statuses = ("queued", "running", "waiting", "completed", "error", "aborted")
        return frozenset(
            {
                self.runs_index(),
                self.runs_expiring(),
                *(self.runs_by_status(status) for status in statuses),
                self.leases(),
                self.workers(),
                self.queue(),
            }
        )

    def pattern(self) -> str:
        """A SCAN MATCH pattern for every key under this prefix (tests, maintenance)."""
        escaped = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix)
        return f"{escaped}:*"


@dataclass(frozen=True)
class BenchKeys:
    """The names one `orchestrator bench` run uses, all under its own unique prefix."""

    prefix: str

    @property
    def ours(self) -> Keys:
        """The orchestrator's keys for the bench's workers and client."""
        return Keys(self.prefix)

    @property
    def noop(self) -> Keys:
        """The orchestrator's keys for the no-op worker (its own queue)."""
        return Keys(f"{self.prefix}:noop")

    @property
    def forks(self) -> BenchKeys:
        """The fork section's names."""
        return BenchKeys(f"{self.prefix}:forks")

    @property
    def loops(self) -> BenchKeys:
        """The agent-loop section's names."""
        return BenchKeys(f"{self.prefix}:loops")

    @property
    def batches(self) -> BenchKeys:
        """The batch section's names."""
        return BenchKeys(f"{self.prefix}:batches")

    def arq_queue(self) -> str:
        """The stock arq worker's queue."""
        return f"{self.prefix}:arq-queue"

    def arq_done(self) -> str:
        """List: when each stock arq job of a batch started."""
        return f"{self.prefix}:arq-done"

    def arq_warm(self) -> str:
        """List: the stock arq workers' warm-up jobs (which process ran each)."""
        return f"{self.prefix}:arq-warm"

    def starts(self, whose: str) -> str:
        """List: when each no-op job started, on `whose` worker ("ours" or "arq")."""
        return f"{self.prefix}:bench:starts-{whose}"

    def raw_stream(self, name: str) -> str:
        """A stream of a raw Redis baseline ("delivery", "xadd")."""
        return f"{self.prefix}:raw-{name}"

    def pattern(self) -> str:
        """A SCAN MATCH pattern for every name above."""
        return self.ours.pattern()
