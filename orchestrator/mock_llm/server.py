"""`MockLLMServer`: the scripted model on a TCP port, and `serve` for the command line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import structlog
from pydantic import ValidationError

from orchestrator.mock_llm.anthropic import handle_messages
from orchestrator.mock_llm.chat import answer, error_body
from orchestrator.mock_llm.request import InvalidRequest, bearer_key, parse_chat_request
from orchestrator.mock_llm.script import (
    Script,
    describe_validation_error,
    load_script,
    parse_script,
)
from orchestrator.mock_llm.state import ScriptState
from orchestrator.mock_llm.strict import STRICT_STATUS, strict_error_body, strict_problem
from orchestrator.mock_llm.wire import BadHTTP, Request, ResponseWriter, read_request

OWNED_BY = "orchestrator-scripted"
_log = structlog.get_logger("orchestrator.mock_llm")

_Handler = Callable[[Request, ResponseWriter], Awaitable[None]]


class MockLLMServer:
    """An OpenAI-compatible server that answers from a script (see docs/scripted-model.md).

    Use as `async with MockLLMServer(script) as server:` and point a client at
    `server.base_url`. Port 0 picks a free port.
    """

    def __init__(
        self,
        script: Script | Mapping[str, Any],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.state = ScriptState(parse_script(script))
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._routes: dict[tuple[str, str], _Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/messages"): self._messages,
            ("GET", "/v1/models"): self._models,
            ("GET", "/_mock/requests"): self._requests,
            ("POST", "/_mock/reset"): self._reset,
            ("POST", "/_mock/script"): self._script,
        }

    @property
    def url(self) -> str:
        """The server root, e.g. `http://127.0.0.1:8123`."""
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as its base URL, e.g. `http://127.0.0.1:8123/v1`."""
        return f"{self.url}/v1"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and end every open connection, even a stalled one."""
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await asyncio.sleep(0)  # let the connection callbacks see their work end
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> MockLLMServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The work runs in an inner task that stop() may cancel; asyncio.wait lets this
        # callback task end normally then, while its own cancellation still propagates.
        task = asyncio.ensure_future(self._converse(reader, ResponseWriter(writer)))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        await asyncio.wait([task])

    async def _converse(self, reader: asyncio.StreamReader, out: ResponseWriter) -> None:
        try:
            await self._serve_requests(reader, out)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        except Exception:
            _log.exception("scripted model failed on a connection")
        finally:
            out.close()

    async def _serve_requests(self, reader: asyncio.StreamReader, out: ResponseWriter) -> None:
        while not out.closed:
            try:
                request = await read_request(reader)
            except BadHTTP as exc:
                await out.send_json(400, error_body(str(exc), "invalid_request_error", "bad_http"))
                return
            if request is None:
                return
            await self._dispatch(request, out)
            if not request.keep_alive:
                return

    async def _dispatch(self, request: Request, out: ResponseWriter) -> None:
        handler = self._routes.get((request.method, request.path))
        if handler is not None:
            await handler(request, out)
        elif any(path == request.path for _, path in self._routes):
            message = f"method {request.method} not allowed on {request.path}"
            await out.send_json(405, error_body(message, "invalid_request_error", "bad_method"))
        else:
            message = f"no route {request.method} {request.path}"
            await out.send_json(404, error_body(message, "invalid_request_error", "not_found"))

    async def _chat(self, request: Request, out: ResponseWriter) -> None:
        try:
            chat = parse_chat_request(
                request.body, api_key=bearer_key(request.headers.get("authorization"))
            )
        except InvalidRequest as exc:
            await out.send_json(400, error_body(str(exc), "invalid_request_error", exc.code))
            return
        problem = strict_problem(chat.body) if self.state.script.strict else None
        if problem is not None:
            self.state.note_rejected(chat, problem)
            await out.send_json(STRICT_STATUS, strict_error_body(problem))
            return
        decision = self.state.decide(chat)
        await answer(out, chat, decision, self.state.script.model)

    async def _messages(self, request: Request, out: ResponseWriter) -> None:
        await handle_messages(self.state, request, out)

    async def _models(self, request: Request, out: ResponseWriter) -> None:
        model = {"id": self.state.script.model, "object": "model", "created": 0}
        await out.send_json(200, {"object": "list", "data": [model | {"owned_by": OWNED_BY}]})

    async def _requests(self, request: Request, out: ResponseWriter) -> None:
        await out.send_json(200, self.state.records())

    async def _reset(self, request: Request, out: ResponseWriter) -> None:
        self.state.reset()
        await out.send_json(200, {"ok": True})

    async def _script(self, request: Request, out: ResponseWriter) -> None:
        try:
            script = Script.model_validate_json(request.body)
        except ValidationError as exc:
            message = f"invalid script: {describe_validation_error(exc)}"
            await out.send_json(400, error_body(message, "invalid_request_error", "invalid_script"))
            return
        self.state.replace(script)
        await out.send_json(200, {"ok": True, "rules": len(script.rules)})


async def _serve_until_signalled(server: MockLLMServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        _log.warning(
            f"SCRIPTED MODEL (not a real LLM) listening on {server.base_url}",
            model=server.state.script.model,
            rules=len(server.state.script.rules),
        )
        await stop.wait()
    _log.info("scripted model stopped")


def serve(host: str, port: int, script_path: str, *, strict: bool = False) -> None:
    """Run the scripted model until SIGINT or SIGTERM (blocking).

    `script_path` is a JSON script file, or the name of a packaged script (`demo`).
    `strict` turns on strict mode (as `"strict": true` in the script does).
    """
    script = load_script(script_path)
    if strict:
        script = script.model_copy(update={"strict": True})
    server = MockLLMServer(script, host=host, port=port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_until_signalled(server))
