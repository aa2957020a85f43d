"""Log configuration for the entry points (`orchestrator worker`, `api`, ...): the one
place that configures structlog and the standard library's logging.

On a terminal the lines are structlog's console rendering; anywhere else (a container,
a file, a pipe to a log shipper) every line is one JSON object. Either way each line
carries what is bound in the context: the worker binds `worker_id` for the process,
and each job binds `run_id` and `session_id` for its own task (`structlog.contextvars`),
so a line logged anywhere in a turn says which run, session and worker it belongs to.
The standard library's records (uvicorn, arq) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog

__all__ = ["LogFormat", "configure_logging", "wants_json"]

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def wants_json(log_format: LogFormat, stream: TextIO) -> bool:
    """JSON unless asked for the console format, or "auto" on a terminal."""
    if log_format == "auto":
        return not (hasattr(stream, "isatty") and stream.isatty())
    return log_format == "json"


def configure_logging(
    log_format: LogFormat = "auto", level: str = "info", stream: TextIO | None = None
) -> bool:
    """Configure structlog and the root logger to write to `stream` (stderr by default).
    Returns True if the lines are JSON. Calling it again replaces the configuration."""
    out = stream if stream is not None else sys.stderr
    as_json = wants_json(log_format, out)
    number = _LEVELS.get(level.lower(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Libraries (arq logs every job) speak at WARNING; our own lines use structlog.
    root.setLevel(max(number, logging.WARNING))
    return as_json
