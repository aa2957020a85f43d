"""The `SessionJournal` contract: what PyRepl relies on from any journal backend.

Subclass it with a `make_journal` fixture: a factory of fresh, empty journals (of one
session) with the given `JournalLimits`. The class name has no `Test` prefix, so pytest
only collects the subclasses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from orchestrator.errors import ToolError
from orchestrator.ports import JournalHead, JournalLimits, SessionJournal

MakeJournal = Callable[[JournalLimits], SessionJournal]


class SessionJournalContract:
    @pytest.fixture
    def journal(self, make_journal: MakeJournal) -> SessionJournal:
        return make_journal(JournalLimits())

    async def test_a_journal_never_written_is_empty_and_complete(
        self, journal: SessionJournal
    ) -> None:
        assert await journal.head("repl") == JournalHead()
        record = await journal.read("repl")
        assert record.entries == []
        assert record.complete

    async def test_entries_come_back_in_order_under_one_generation(
        self, journal: SessionJournal
    ) -> None:
        first = await journal.append("repl", {"code": "x = 1"})
        second = await journal.append("repl", {"code": "x += 1", "calls": [{"op": "a"}]})
        assert first.generation is not None
        assert second.generation == first.generation
        assert (first.seq, second.seq) == (1, 2)
        record = await journal.read("repl")
        assert record.entries == [{"code": "x = 1"}, {"code": "x += 1", "calls": [{"op": "a"}]}]
        assert (record.seq, record.stored, record.complete) == (2, 2, True)
        assert await journal.head("repl") == JournalHead(
            generation=first.generation, seq=2, stored=2
        )

    async def test_names_are_independent(self, journal: SessionJournal) -> None:
        await journal.append("repl.main", {"code": "a"})
        assert (await journal.head("repl.fork_1")).seq == 0
        assert (await journal.read("repl.main")).entries == [{"code": "a"}]

    async def test_reset_starts_a_new_generation_without_entries(
        self, journal: SessionJournal
    ) -> None:
        before = await journal.append("repl", {"code": "a"})
        after = await journal.reset("repl")
        assert after.generation not in (None, before.generation)
        assert (after.seq, after.stored) == (0, 0)
        assert (await journal.read("repl")).entries == []
        again = await journal.append("repl", {"code": "b"})
        assert again.generation == after.generation
        assert again.seq == 1

    async def test_a_reset_marked_incomplete_admits_no_replay(
        self, journal: SessionJournal
    ) -> None:
        head = await journal.reset("repl", complete=False)
        assert not head.complete
        await journal.append("repl", {"code": "later"})
        record = await journal.read("repl")
        assert not record.complete
        assert record.entries == []

    async def test_entries_over_the_count_bound_are_counted_not_kept(
        self, make_journal: MakeJournal
    ) -> None:
        journal = make_journal(JournalLimits(max_entries=2))
        for i in range(4):
            head = await journal.append("repl", {"code": f"v{i} = {i}"})
        assert (head.seq, head.stored, head.complete) == (4, 2, False)
        record = await journal.read("repl")
        assert [e["code"] for e in record.entries] == ["v0 = 0", "v1 = 1"]
        assert not record.complete

    async def test_an_entry_over_the_byte_bound_stops_the_journal(
        self, make_journal: MakeJournal
    ) -> None:
        journal = make_journal(JournalLimits(max_bytes=200))
        await journal.append("repl", {"code": "small"})
        head = await journal.append("repl", {"code": "x" * 500})
        assert (head.seq, head.stored) == (2, 1)
        # Later small entries are not kept either: without the missing one they are useless.
        head = await journal.append("repl", {"code": "small again"})
        assert (head.seq, head.stored) == (3, 1)

    async def test_entries_must_be_json_objects(self, journal: SessionJournal) -> None:
        with pytest.raises(ToolError):
            await journal.append("repl", ["not", "an", "object"])  # type: ignore[arg-type]
        with pytest.raises(ToolError):
            await journal.append("repl", {"not json": {1, 2}})
        assert (await journal.head("repl")).seq == 0

    async def test_concurrent_appends_all_land(self, journal: SessionJournal) -> None:
        heads = await asyncio.gather(*(journal.append("repl", {"n": i}) for i in range(20)))
        assert sorted(h.seq for h in heads) == list(range(1, 21))
        record = await journal.read("repl")
        assert sorted(e["n"] for e in record.entries) == list(range(20))
