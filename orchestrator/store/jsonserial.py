"""JSON for arq jobs and results, replacing arq's pickle default.

Job payloads come from Redis, which is untrusted input: JSON cannot run code when it is
decoded, and the job function validates the payload with pydantic before using it.
"""

from __future__ import annotations

import json
from typing import Any


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
