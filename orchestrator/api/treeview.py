"""A run's fork tree at a glance: one row per agent, and the tree's totals.

Built from the run records (status, times, usage, errors: the authority) and one scan of
the session stream's index fields (entries per agent, waits in a gather, where to tail
from). The dashboard draws its overview and timeline from this, then follows the stream
after `last_id`; it fetches an agent's events only when its lane is opened.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.runs import RunRecord, RunStatus
from orchestrator.store.trees import AgentTrace, TreeScan

__all__ = ["RunTree", "TreeAgent", "TreeTotals", "build_tree", "usage_cost", "usage_tokens"]


class TreeAgent(BaseModel):
    """One agent of the tree (the root run or a fork). Times are epoch seconds."""

    run_id: str
    fork_id: str | None = None
    parent_run_id: str | None = None
    depth: int = 0
    seq: int | None = Field(default=None, description="Its place among its parent's forks.")
    status: RunStatus
    agent: str = ""
    attempt: int = 1
    worker_id: str | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    waits: list[tuple[float, float | None]] = Field(
        default_factory=list,
        description="Intervals suspended in a gather: [from, until]; until null: still waiting.",
    )
    waiting_for: list[str] = Field(
        default_factory=list, description="While waiting: the fork run ids it waits for."
    )
    tokens: int | None = None
    cost: float | None = None
    error: str | None = None
    error_type: str | None = None
    abort_reason: str | None = None
    forks: int = Field(default=0, description="How many forks it spawned.")
    entries: int = Field(
        default=0,
        description="The stream entries it wrote (one XADD each; its forks' queued statuses"
        " written together count for it).",
    )
    outputs: int = Field(
        default=0, description="Its outputs in the stream (events, responses, statuses)."
    )
    first_id: str | None = Field(default=None, description="The stream id of its first output.")


class TreeTotals(BaseModel):
    agents: int
    depth: int
    by_status: dict[str, int]
    tokens: int
    cost: float | None = Field(description="Null when no agent's usage carries a cost.")
    entries: int
    outputs: int = 0


class RunTree(BaseModel):
    """The whole tree below one run: its agents (parents before their forks, forks in
    spawn order) and totals. Follow the session stream after `last_id` for what happens
    next."""

    run_id: str
    root_run_id: str
    session_id: str
    last_id: str | None
    generated_at: float
    totals: TreeTotals
    agents: list[TreeAgent]


def usage_tokens(usage: dict[str, Any] | None) -> int | None:
    value = (usage or {}).get("total_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_cost(usage: dict[str, Any] | None) -> float | None:
    """The cost a provider reported in the usage (OpenRouter-style `cost`), if any."""
    value = (usage or {}).get("cost")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _of_record(record: RunRecord, trace: AgentTrace | None) -> TreeAgent:
    fork = record.fork
    return TreeAgent(
        run_id=record.run_id,
        fork_id=fork.fork_id if fork else None,
        parent_run_id=fork.parent_run_id if fork else None,
        depth=fork.depth if fork else 0,
        seq=fork.fork_seq if fork else None,
        status=record.status,
        agent=record.agent,
        attempt=record.attempt,
        worker_id=record.worker_id,
        submitted_at=record.submitted_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        waits=_waits(record, trace),
        waiting_for=list(record.waiting_for) if record.status is RunStatus.WAITING else [],
        tokens=usage_tokens(record.usage),
        cost=usage_cost(record.usage),
        error=record.error,
        error_type=record.error_type,
        abort_reason=record.abort_reason,
        entries=trace.entries if trace else 0,
        outputs=trace.outputs if trace else 0,
        first_id=trace.first_id if trace else None,
    )


def _waits(record: RunRecord, trace: AgentTrace | None) -> list[tuple[float, float | None]]:
    if trace is None:
        return []
    waits = list(trace.waits)
    if waits and waits[-1][1] is None and record.status is not RunStatus.WAITING:
        # The stream has not shown its resumption yet; the record says it is over.
        began = waits[-1][0]
        waits[-1] = (began, max(began, record.finished_at or record.started_at or began))
    return waits


def _of_stream(run_id: str, root_run_id: str, trace: AgentTrace) -> TreeAgent:
    """An agent the stream knows but whose record is gone: what its entries say."""
    status = trace.statuses[-1][0] if trace.statuses else RunStatus.RUNNING
    queued = next((at for s, at in trace.statuses if s is RunStatus.QUEUED), None)
    ended = next((at for s, at in trace.statuses if s.terminal), None)
    fork_id = run_id.rpartition(".")[2] if run_id != root_run_id else None
    return TreeAgent(
        run_id=run_id,
        fork_id=fork_id,
        parent_run_id=root_run_id if fork_id else None,
        depth=1 if fork_id else 0,
        status=status,
        submitted_at=queued,
        finished_at=ended,
        waits=list(trace.waits),
        entries=trace.entries,
        outputs=trace.outputs,
        first_id=trace.first_id,
    )


def build_tree(records: Iterable[RunRecord], scan: TreeScan, *, generated_at: float) -> RunTree:
    """The tree of the first record (the run asked about) and the records below it."""
    ordered = list(records)
    top = ordered[0]
    agents = [_of_record(r, scan.agents.get(r.run_id)) for r in ordered]
    known = {a.run_id for a in agents}
    if top.fork is None:
        agents.extend(
            _of_stream(run_id, top.run_id, trace)
            for run_id, trace in scan.agents.items()
            if run_id not in known
        )
    forks = Counter(a.parent_run_id for a in agents if a.parent_run_id)
    for agent in agents:
        agent.forks = forks.get(agent.run_id, 0)
    costs = [a.cost for a in agents if a.cost is not None]
    by_status = dict.fromkeys((s.value for s in RunStatus), 0)
    by_status.update(Counter(a.status.value for a in agents))
    totals = TreeTotals(
        agents=len(agents),
        depth=max(a.depth for a in agents) - agents[0].depth,
        by_status=by_status,
        tokens=sum(a.tokens or 0 for a in agents),
        cost=sum(costs) if costs else None,
        entries=sum(a.entries for a in agents),
        outputs=sum(a.outputs for a in agents),
    )
    return RunTree(
        run_id=top.run_id,
        root_run_id=top.root_run_id,
        session_id=top.session_id,
        last_id=scan.last_id,
        generated_at=generated_at,
        totals=totals,
        agents=agents,
    )
