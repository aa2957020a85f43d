"""A worker process's garbage collector, once it has loaded its code and agents: what
exists then is frozen out of the collector's sight, and the youngest generation is
collected far less often (in a fresh interpreter: the collector is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

PROBE = """
import gc, json
from workers.worker import GC_YOUNG_THRESHOLD, settle_gc
before = gc.get_threshold()
settle_gc()
cycle = []
cycle.append(cycle)
del cycle
print(json.dumps({
    "frozen": gc.get_freeze_count(),
    "threshold": gc.get_threshold(),
    "before": before,
    "young": GC_YOUNG_THRESHOLD,
    "collected": gc.collect(),
}))
"""


def test_a_settled_worker_freezes_its_startup_objects_and_collects_young_less_often() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=50
    ).stdout
    seen = json.loads(out)
    assert seen["frozen"] > 10_000  # the modules, classes and validators loaded by then
    assert seen["threshold"][0] == max(seen["before"][0], seen["young"]) >= 10_000
    assert seen["threshold"][1:] == seen["before"][1:]
    assert seen["collected"] >= 1  # cycles made after it are still collected
