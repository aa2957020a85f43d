"""How long to wait before trying a model call again, and which failures are worth it.

The loop that uses this lives in `OpenAICompatible._with_retries` and nowhere else.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
RETRY_AFTER_STATUSES = frozenset({429, 503})
KEY_REJECTED_STATUSES = frozenset({401, 403})
# Failures of the connection itself. A read timeout mid-stream is a TimeoutException; a
# server closing the socket mid-body is a RemoteProtocolError (h11) or a ReadError.
RETRYABLE_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


# A 5xx whose error says the *request* is wrong fails the same way every time: llama.cpp's
# servers answer 500 when the chat template cannot render the messages. These are the
# OpenAI-style error types/codes and message phrases that mark such a rejection.
INVALID_REQUEST_KINDS = frozenset(
    {"invalid_request_error", "invalid_request", "invalid_value", "context_length_exceeded"}
)
INVALID_REQUEST_PHRASES = re.compile(
    r"\binvalid\b|\bmust (?:be|have|contain|alternate|not)\b|can only concatenate|"
    r"NoneType|\bjinja\b|\btemplate\b|not supported|unsupported",
    re.IGNORECASE,
)


def rejected_as_invalid(status: int, message: str, kinds: set[str] | frozenset[str]) -> bool:
    """Did the server refuse this request as invalid (so sending it again cannot help)?

    The rule: a 4xx other than 408, 409 and 429 is always the request's fault; a 5xx is
    the request's fault when its error `type` or `code` is one of INVALID_REQUEST_KINDS
    or its message matches INVALID_REQUEST_PHRASES; any other 5xx is the server's and
    is retried. `kinds` are the error body's `type` and `code` values.
    """
    if status < 500:
        return status not in RETRYABLE_STATUSES
    return bool(kinds & INVALID_REQUEST_KINDS) or bool(INVALID_REQUEST_PHRASES.search(message))


class RetryableFailure(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, capped; a server's `Retry-After` wins.

    `max_retries` counts retries after the first attempt: `max_retries=0` makes one attempt.
    """

    max_retries: int = 5
    retry_delay: float = 1.0
    max_retry_delay: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.retry_delay < 0 or self.max_retry_delay < 0:
            raise ValueError("max_retries, retry_delay and max_retry_delay must not be negative")

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number `retry_number` (0 for the first retry)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_delay)
        ceiling = min(self.max_retry_delay, self.retry_delay * 2**retry_number)
        return self.rng.uniform(0, ceiling)
