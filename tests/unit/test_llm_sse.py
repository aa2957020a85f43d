"""SSE parsing tolerates the differences between OpenAI-compatible servers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from orchestrator.llm.sse import SSEEvent, decode_data, iter_sse_events


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _events(*lines: str) -> list[SSEEvent]:
    return [event async for event in iter_sse_events(_lines(*lines))]


async def test_data_with_and_without_space_after_colon() -> None:
    events = await _events("data: {}", "", "data:{}", "")
    assert [e.data for e in events] == ["{}", "{}"]


async def test_comments_and_keep_alive_pings_are_ignored() -> None:
    events = await _events(": ping", "", ":keep-alive", "data: x", "", ": ping", "")
    assert events == [SSEEvent("x")]


async def test_crlf_and_bare_cr_line_endings() -> None:
    assert await _events("data: a\r\n", "\r\n", "data: b\r", "\r") == [SSEEvent("a"), SSEEvent("b")]
    # One line holding several CR-separated lines (a transport that did not split them).
    assert await _events("data: a\r\rdata: b\r\r") == [SSEEvent("a"), SSEEvent("b")]


async def test_event_names_are_kept_and_reset_per_event() -> None:
    events = await _events("event: error", "data: boom", "", "data: ok", "")
    assert events == [SSEEvent("boom", "error"), SSEEvent("ok", None)]


async def test_multi_line_data_is_joined_with_newlines() -> None:
    events = await _events('data: {"a":', "data: 1}", "")
    assert events == [SSEEvent('{"a":\n1}')]
    assert decode_data(events[0].data).objects == [{"a": 1}]


async def test_pending_event_is_dispatched_at_eof_without_blank_line() -> None:
    assert await _events("data: last") == [SSEEvent("last")]


async def test_id_retry_and_empty_events_are_ignored() -> None:
    assert await _events("id: 7", "retry: 100", "", "event: ping", "", "data: x", "") == [
        SSEEvent("x")
    ]


def test_done_marker_and_non_json_data() -> None:
    assert decode_data("[DONE]").done
    bad = decode_data("{not json")
    assert bad.malformed
    assert bad.objects == []
    assert decode_data("[1, 2]").malformed  # JSON, but not a chunk object


def test_one_chunk_per_line_without_blank_lines_is_still_read() -> None:
    decoded = decode_data('{"a": 1}\n{"a": 2}\n[DONE]')
    assert decoded.objects == [{"a": 1}, {"a": 2}]
    assert decoded.done
    assert not decoded.malformed
