"""The pieces of lm-deluge's client that need no model: the progress display, and the
batch records a worker reads back from Redis (untrusted: validated, never trusted)."""

from __future__ import annotations

import io

import pytest

from orchestrator.deluge import APIResponse, Conversation, Message, ToolCall, default_registry
from orchestrator.deluge.batch import (
    BatchProgress,
    BatchSpec,
    decode_item,
    decode_spec,
    encode_item,
    read_result,
    result_json,
)
from orchestrator.deluge.progress import NoProgress, PlainProgress, RichProgress, make_progress
from orchestrator.errors import PayloadError

pytestmark = pytest.mark.timeout(10)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_not_on_a_terminal_unless_asked() -> None:
    assert isinstance(make_progress("auto", 3, io.StringIO()), NoProgress)
    assert isinstance(make_progress("none", 3, Terminal()), NoProgress)
    out = io.StringIO()
    bar = make_progress("plain", 2, out)
    assert isinstance(bar, PlainProgress)
    bar.advance(0.5)
    bar.advance(0.25)
    bar.close()
    assert "2/2" in out.getvalue()
    assert "$0.7500" in out.getvalue()


def test_rich_bar_on_a_terminal_when_rich_is_installed() -> None:
    out = Terminal()
    bar = make_progress("auto", 3, out)
    assert isinstance(bar, RichProgress)
    for _ in range(3):
        bar.advance(0.1)
    bar.close()
    assert "3/3" in out.getvalue()
    assert "$0.3000" in out.getvalue()


def test_items_round_trip_and_bad_items_are_payload_errors() -> None:
    conv = Conversation().system("s").user("u")
    conv.add(Message.ai("t", [ToolCall("c", "f", {"a": 1})]))
    assert decode_item(encode_item(conv)) == conv
    assert decode_item(encode_item("just text")).messages[0].completion == "just text"
    for raw in ("{", '{"role": "user"}', '[{"role": "wizard"}]', "[1]"):
        with pytest.raises(PayloadError):
            decode_item(raw)


def test_specs_are_validated() -> None:
    spec = BatchSpec(models=[default_registry.get("gpt-4o-mini")], limiter_name="x")
    assert decode_spec(spec.model_dump_json()) == spec
    with pytest.raises(PayloadError):
        decode_spec('{"type": "deluge_batch", "models": []}')
    with pytest.raises(PayloadError):
        decode_spec(spec.model_dump_json().replace('"limiter_name"', '"extra": 1, "limiter_name"'))


def test_results_keep_the_response_and_the_conversation() -> None:
    response = APIResponse(model_internal="m", message={"role": "assistant", "content": "hi"})
    conv = Conversation().user("q").ai("hi")
    back, conversation = read_result(result_json(7, response, conv))
    assert (back.id, back.completion, conversation) == (7, "hi", conv)
    with pytest.raises(PayloadError):
        read_result('{"usage": "lots"}')


def test_progress_counts_pending_and_rejects_garbage() -> None:
    progress = BatchProgress.from_counters(
        "b", {"total": "5", "done": "3", "failed": "1", "cost": "0.5", "created_at": "1.0"}
    )
    assert (progress.pending, progress.finished) == (1, False)
    with pytest.raises(PayloadError):
        BatchProgress.from_counters("b", {"total": "many"})
