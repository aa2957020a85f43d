"""Small decoding helpers for values read back from Redis (bytes, or str on a decoding client)."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from orchestrator.errors import PayloadError

T = TypeVar("T")


def text(value: Any) -> str:
    """A Redis reply value as text (bytes are decoded as UTF-8, strictly)."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError as exc:
            raise PayloadError(f"not UTF-8 text: {value[:60]!r}") from exc
    if isinstance(value, str):
        return value
    raise PayloadError(f"expected a string reply, got {type(value).__name__}")


def opt_text(value: Any) -> str | None:
    return None if value is None else text(value)


def load_json(value: Any, what: str) -> Any:
    """Parse JSON read from Redis; raises `PayloadError` naming `what` on garbage."""
    try:
        return json.loads(value)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not valid JSON") from exc


def dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def parse_int(value: Any, what: str) -> int:
    """An integer stored as text; `PayloadError` if it is not one."""
    try:
        return int(text(value))
    except ValueError as exc:
        raise PayloadError(f"{what} is not an integer: {value!r}") from exc


async def resolve(value: Awaitable[T] | T) -> T:
    """Await a redis.asyncio reply whose stub says "awaitable or value" (hash commands)."""
    if inspect.isawaitable(value):
        return cast(T, await value)
    return value


def ascii_digits(raw: str) -> bool:
    """Only ASCII digits, at least one: what int() takes as a plain count or index
    (str.isdigit also takes "²" or "①", on which int() raises ValueError)."""
    return raw.isascii() and raw.isdigit()
