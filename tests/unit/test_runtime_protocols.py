"""`conforms` answers as `isinstance` does for the runtime's method-only Protocols."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.ports import DeferringCheckpointer, HistoryMemoryStore
from orchestrator.runtime.memory import InMemoryMemoryStore
from orchestrator.runtime.protocols import conforms


class _Saves:
    async def save(self, state: Any) -> None:
        return None


class _SavesLater(_Saves):
    def save_later(self, state: Any) -> None:
        return None


class _Blocked(_SavesLater):
    save_later = None  # type: ignore[assignment]


def _carrying() -> _Saves:
    saver = _Saves()
    saver.save_later = lambda state: None  # type: ignore[attr-defined]
    return saver


@pytest.mark.parametrize(
    "obj",
    [_Saves(), _SavesLater(), _Blocked(), _carrying(), object(), None],
    ids=["save-only", "save-later", "blocked", "carried-by-instance", "object", "none"],
)
def test_conforms_is_isinstance_for_a_checkpointer(obj: Any) -> None:
    assert conforms(obj, DeferringCheckpointer) is isinstance(obj, DeferringCheckpointer)


def test_conforms_is_isinstance_for_a_memory_store() -> None:
    store = InMemoryMemoryStore()
    assert conforms(store, HistoryMemoryStore) is isinstance(store, HistoryMemoryStore)
    assert conforms(_Saves(), HistoryMemoryStore) is False
