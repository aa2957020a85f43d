"""`orchestrator api`: serve the API and dashboard with uvicorn."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import uvicorn

from orchestrator.api.app import DEFAULT_MAX_BODY_BYTES, create_app
from orchestrator.settings import Settings

__all__ = ["serve"]

_TOKEN_IN_URL = re.compile(r"(access_token|key)=[^&\s\"]*")


class _RedactKeys(logging.Filter):
    """Keeps API keys given in URLs (`?access_token=` for EventSource) out of access logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN_IN_URL.sub(r"\1=***", a) if isinstance(a, str) else a for a in record.args
            )
        return True


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_keys: Mapping[str, str] | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    structured_logs: bool = False,
) -> None:
    """Run the API until interrupted (blocks). `api_keys`: key -> tenant; none = open.

    With `structured_logs` uvicorn keeps the logging that `orchestrator.logs` configured
    (JSON lines, like every other log line), instead of installing its own."""
    app = create_app(settings, api_keys=api_keys, max_body_bytes=max_body_bytes)
    print(f"orchestrator API and dashboard on http://{host}:{port}/", flush=True)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=5,
        log_config=None if structured_logs else uvicorn.config.LOGGING_CONFIG,
    )
    server = uvicorn.Server(config)  # configures logging, so the filter goes on after
    logging.getLogger("uvicorn.access").addFilter(_RedactKeys())
    server.run()
