"""`HTTPPool`: one pool of connections and the two requests a model client sends on it.

It is what `httpx.AsyncClient` does for a model client, minus what a model API never
uses: cookies (the client parsed every response's into a jar), redirects, auth flows,
event hooks and the per-request URL and header merging, which together cost about 15 %
of a streamed request's CPU. Requests go straight to an httpx transport (its own
`AsyncHTTPTransport`, or the one given, e.g. `httpx.MockTransport` in tests), so errors,
timeouts and responses are httpx's, as before; the headers sent are httpx's defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from json import dumps as json_dumps
from types import TracebackType
from typing import Any

import httpx

__all__ = ["HTTPPool", "body_bytes"]

_DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "Connection": "keep-alive",
    "User-Agent": f"python-httpx/{httpx.__version__}",
}
_JSON_HEADERS = {**_DEFAULT_HEADERS, "Content-Type": "application/json"}


def body_bytes(response: httpx.Response) -> AsyncIterable[bytes]:
    """A streamed response's body as it arrives, decoded as httpx decodes it (gzip, ...).

    A body sent as it is (no Content-Encoding, as model servers stream) comes straight
    from the transport's stream, without httpx's layers that only count and re-chunk it;
    the response still closes as before (`HTTPPool.stream` closes it on exit).
    """
    stream = response.stream
    if "content-encoding" in response.headers or not isinstance(stream, httpx.AsyncByteStream):
        return response.aiter_bytes()
    response.is_stream_consumed = True
    return stream


class HTTPPool:
    """Requests to `base_url` (relative URLs are joined to it) over `transport`."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, base_url: str, timeout: httpx.Timeout
    ) -> None:
        self._transport = transport
        self._base = httpx.URL(base_url)
        self._timeout = timeout.as_dict()
        self._urls: dict[str, httpx.URL] = {}
        self.is_closed = False

    def _request(
        self, method: str, url: httpx.URL | str, json: Any, headers: dict[str, str] | None
    ) -> httpx.Request:
        # The body as httpx encodes `json=` (compact, UTF-8, no NaN), the JSON headers
        # given up front, and each relative URL joined once: httpx.Request(json=...) with
        # a fresh join cost about twice as much CPU per model call. The headers httpx
        # adds to a `content=` request (Host, Content-Length) are given too, with the body
        # as its stream: httpx then builds its header list once, not three times.
        target = url if isinstance(url, httpx.URL) else self._join(url)
        body = json_dumps(json, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        content = body.encode()
        sent = {**_JSON_HEADERS, **headers} if headers else _JSON_HEADERS
        request = httpx.Request(
            method,
            target,
            headers=[
                ("Host", target.netloc.decode("ascii")),
                *sent.items(),
                ("Content-Length", str(len(content))),
            ],
            stream=httpx.ByteStream(content),
            extensions={"timeout": self._timeout},
        )
        request.read()  # `request.content`, as a `content=` request has it
        return request

    def _join(self, url: str) -> httpx.URL:
        joined = self._urls.get(url)
        if joined is None:
            joined = self._urls[url] = self._base.join(url)
        return joined

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response

    async def post(
        self, url: httpx.URL | str, *, json: Any, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST and read the whole response."""
        response = await self._send(self._request("POST", url, json, headers))
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def stream(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        json: Any,
        headers: dict[str, str] | None = None,
    ) -> _Streamed:
        """`async with pool.stream(...) as response`: send and hand over the response
        with its body unread; closed on exit."""
        return _Streamed(self, method, url, json, headers)

    async def aclose(self) -> None:
        self.is_closed = True
        await self._transport.aclose()


class _Streamed:
    """One streamed request (a class, not a generator: see `HTTPShards.lease`)."""

    __slots__ = ("_args", "_pool", "_response")

    def __init__(
        self,
        pool: HTTPPool,
        method: str,
        url: httpx.URL | str,
        json: Any,
        headers: dict[str, str] | None,
    ) -> None:
        self._pool = pool
        self._args = (method, url, json, headers)
        self._response: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        self._response = await self._pool._send(self._pool._request(*self._args))
        return self._response

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._response is not None:
            await self._response.aclose()
