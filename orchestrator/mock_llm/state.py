"""The server's mutable state: the current script, the `times` counters and the request
log. It lives on one event loop, so it needs no locks.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator.mock_llm.matching import matches, regex_groups
from orchestrator.mock_llm.request import ChatRequest
from orchestrator.mock_llm.script import Fault, Latency, Reply, Rule, Script


@dataclass(frozen=True)
class Decision:
    """How to answer one request: which rule (None: the fallback), what, when, what fault."""

    rule_index: int | None
    rule_name: str | None
    reply: Reply
    latency: Latency
    fault: Fault | None
    groups: tuple[str, ...]


class ScriptState:
    def __init__(self, script: Script) -> None:
        self.script = script
        self._rule_uses: Counter[int] = Counter()
        self._fault_uses: Counter[int] = Counter()
        self._records: list[dict[str, Any]] = []

    def replace(self, script: Script) -> None:
        """Swap the script; the counters restart (they count rules of the old one)."""
        self.script = script
        self._rule_uses.clear()
        self._fault_uses.clear()

    def reset(self) -> None:
        """Forget every request received and restart every counter."""
        self._records.clear()
        self._rule_uses.clear()
        self._fault_uses.clear()

    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def decide(self, request: ChatRequest) -> Decision:
        """Pick the answering rule, spend its budgets and log the request."""
        decision = self._choose(request)
        self._records.append(
            {
                "body": request.body,
                "rule": decision.rule_name,
                "rule_index": decision.rule_index,
                "fault": decision.fault.type if decision.fault else None,
                "stream": request.stream,
                "api_key": request.api_key,
                "at": time.time(),  # when it arrived (rate-limit tests measure here)
            }
        )
        return decision

    def note_rejected(self, request: ChatRequest, problem: str) -> None:
        """Log a request strict mode refused (`fault: "strict"`, no rule answered)."""
        self._records.append(
            {
                "body": request.body,
                "rule": None,
                "rule_index": None,
                "fault": "strict",
                "stream": request.stream,
                "api_key": request.api_key,
                "problem": problem,
            }
        )

    def _choose(self, request: ChatRequest) -> Decision:
        for index, rule in enumerate(self.script.rules):
            if self._budget_spent(index, rule) or not matches(rule.match, request):
                continue
            self._rule_uses[index] += 1
            return Decision(
                rule_index=index,
                rule_name=rule.name or f"rules[{index}]",
                reply=rule.reply,
                latency=self.script.latency.overridden_by(rule.latency),
                fault=self._spend_fault(index, rule),
                groups=regex_groups(rule.match, request) or (),
            )
        return Decision(None, None, self.script.fallback, self.script.latency, None, ())

    def _budget_spent(self, index: int, rule: Rule) -> bool:
        return rule.times is not None and self._rule_uses[index] >= rule.times

    def _spend_fault(self, index: int, rule: Rule) -> Fault | None:
        fault = rule.fault
        if fault is None:
            return None
        if fault.times is not None and self._fault_uses[index] >= fault.times:
            return None
        self._fault_uses[index] += 1
        return fault
