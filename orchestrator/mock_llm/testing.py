"""`MockLLMThread`: the scripted model on a background thread with its own event loop.

Because it owns its loop and a real TCP port, sync tests, async tests and separate worker
processes can all talk to it. Its helpers go through the `/_mock/*` routes, the same way
another process would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from orchestrator.mock_llm.script import Script, parse_script
from orchestrator.mock_llm.server import MockLLMServer

_START_TIMEOUT_S = 10.0
# Loop turns given to closing transports before the loop closes (each close takes one
# or two callbacks; no waiting on a clock).
_CLOSE_TURNS = 5


class MockLLMThread:
    """Run a `MockLLMServer` in a daemon thread: `with MockLLMThread(script) as llm: ...`."""

    def __init__(
        self,
        script: Script | Mapping[str, Any],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.server = MockLLMServer(parse_script(script), host=host, port=port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. `http://127.0.0.1:8123/v1`."""
        return self.server.base_url

    def start(self) -> MockLLMThread:
        """Start the server and wait until it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="scripted-model", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise RuntimeError("the scripted model did not start in time")
        if self._startup_error is not None:
            raise RuntimeError("the scripted model failed to start") from self._startup_error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            # Transports closed by stop() finish closing on later loop turns; without
            # them a connection cut mid-response (an aborted client) is still open when
            # the loop closes, and its socket warns (ResourceWarning) at garbage collection.
            loop.run_until_complete(_let_transports_close())
            loop.close()

    def stop(self) -> None:
        """Stop the server (ending open connections) and join the thread."""
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_START_TIMEOUT_S)
        self._thread = None
        self._loop = None

    def __enter__(self) -> MockLLMThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        with httpx.Client(base_url=self.url, trust_env=False, timeout=10) as client:
            response = client.request(method, path, json=json)
        response.raise_for_status()
        return response.json()

    def requests(self) -> list[dict[str, Any]]:
        """Every chat request received, in order: `{"body", "rule", "rule_index", "fault",
        "stream", "api_key"}` (`rule` is None when the fallback answered; `api_key` is the
        bearer key sent, None without one)."""
        records: list[dict[str, Any]] = self._call("GET", "/_mock/requests")
        return records

    def reset(self) -> None:
        """Clear the request log and every `times` counter."""
        self._call("POST", "/_mock/reset")

    def set_script(self, script: Script | Mapping[str, Any]) -> None:
        """Replace the script (validated here first, so errors name the bad field)."""
        self._call(
            "POST",
            "/_mock/script",
            json=parse_script(script).model_dump(mode="json", exclude_unset=True),
        )


async def _let_transports_close() -> None:
    for _ in range(_CLOSE_TURNS):
        await asyncio.sleep(0)
