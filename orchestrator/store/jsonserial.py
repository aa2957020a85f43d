"""JSON for arq jobs and results, replacing arq's pickle default.

Job payloads come from Redis, which is untrusted input: JSON cannot run code when it is
decoded, and the job function validates the payload with pydantic before using it.
"""

from __future__ import annotations

import json
from typing import Any

import structlog

_log = structlog.get_logger(__name__)


def _fallback(obj: Any) -> Any:
    # arq stores an exception as the result of a failed job; keep its type and text.
    if isinstance(obj, BaseException):
        return {"error_type": type(obj).__name__, "error": str(obj)}
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    return repr(obj)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=_fallback, separators=(",", ":")).encode()


def loads(data: bytes) -> Any:
    return json.loads(data)


class JobDecoder:
    """The worker's job deserializer: JSON, and the arq envelope checked field by field.

    A job whose envelope does not decode or lacks a field is refused here, so arq fails
    it at once and deletes it from the queue (with its in-progress and job keys) instead
    of tripping over it later; `malformed` counts them (shown in the worker heartbeat).
    """

    _FIELDS = (("f", str), ("a", list), ("k", dict), ("et", int))

    def __init__(self) -> None:
        self.malformed = 0

    def __call__(self, data: bytes) -> Any:
        try:
            envelope = json.loads(data)
            _check_envelope(envelope, self._FIELDS)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError too
            self.malformed += 1
            _log.warning("malformed job dropped", error=str(exc), malformed=self.malformed)
            raise
        return envelope


def _check_envelope(envelope: Any, fields: tuple[tuple[str, type], ...]) -> None:
    if not isinstance(envelope, dict):
        raise ValueError(f"job envelope is {type(envelope).__name__}, not an object")
    for name, kind in fields:
        value = envelope.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"job envelope field {name!r} is missing or not a {kind.__name__}")
    attempt = envelope.get("t")
    if attempt is not None and (not isinstance(attempt, int) or isinstance(attempt, bool)):
        raise ValueError("job envelope field 't' is not an int")
