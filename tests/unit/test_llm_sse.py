"""SSE parsing tolerates the differences between OpenAI-compatible servers."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import httpx

from orchestrator.llm.http import HTTPPool, body_bytes
from orchestrator.llm.sse import SSEEvent, decode_data, iter_sse_bytes, iter_sse_events


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


STREAM = (
    'data: {"a": "h\u00e9\u20ac"}\r\n\r\n'  # multi-byte UTF-8
    ": ping\n\n"
    "event: error\rdata: boom\r\r"
    'data: {"a":\ndata: 1}\n\n'
    "data: last"  # no blank line at EOF
)


async def _bytes(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_events_from_bytes_are_the_same_however_the_bytes_are_split() -> None:
    """A streamed body parsed from its raw bytes gives the events the line reader gives,
    wherever the network splits it: inside a CRLF, inside a UTF-8 character."""
    raw = STREAM.encode()
    expected = await _events(*STREAM.splitlines())
    assert [e.data for e in expected] == ['{"a": "h\u00e9\u20ac"}', "boom", '{"a":\n1}', "last"]
    assert [e async for e in iter_sse_bytes(_bytes(raw))] == expected
    for cut in range(1, len(raw)):
        split = [e async for e in iter_sse_bytes(_bytes(raw[:cut], raw[cut:]))]
        assert split == expected, f"split at byte {cut}"
    one_by_one = [
        e async for e in iter_sse_bytes(_bytes(*(raw[i : i + 1] for i in range(len(raw)))))
    ]
    assert one_by_one == expected


async def test_undecodable_bytes_read_as_replacement_characters() -> None:
    events = [e async for e in iter_sse_bytes(_bytes(b"data: a\xff\n\n"))]
    assert events == [SSEEvent("a\ufffd")]


async def test_a_compressed_stream_is_decoded_before_it_is_parsed() -> None:
    """`body_bytes` hands an identity body over as the transport streams it, and a gzip
    one decoded, as httpx decodes it."""
    raw = b"data: one\n\ndata: two\n\n"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("gzip"):
            body = gzip.compress(raw)
            return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=body)
        return httpx.Response(200, content=raw)

    pool = HTTPPool(httpx.MockTransport(handler), "http://model/", httpx.Timeout(5))
    for path in ("plain", "gzip"):
        async with pool.stream("POST", path, json={}) as response:
            events = [e async for e in iter_sse_bytes(body_bytes(response))]
        assert events == [SSEEvent("one"), SSEEvent("two")], path
