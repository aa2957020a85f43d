"""API keys for one model: the least-loaded key serves the next request; rejected keys rest.

A key the server answers 401/403 for is benched for the life of the instance (a restart
or a new instance gives it another chance). Keys are never logged whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import structlog

log = structlog.get_logger(__name__)


def redact(key: str) -> str:
    """A key's printable fingerprint: enough to tell keys apart in logs, not to use them."""
    return f"...{key[-4:]}" if len(key) > 8 else "***"


class NoUsableKey(Exception):
    """Every key in the pool has been benched."""


class APIKeyPool:
    """Hands out the key with the fewest requests in flight.

    Ties go to the key used least recently, so sequential calls rotate through the keys.
    `provider_id` only labels log lines (SimpleLLMFunc's `APIKeyPool(keys, provider_id)`).
    """

    def __init__(self, api_keys: str | Sequence[str], provider_id: str = "") -> None:
        keys = [api_keys] if isinstance(api_keys, str) else list(api_keys)
        if not keys:
            raise ValueError("an API key pool needs at least one key ('' for servers without auth)")
        self.provider_id = provider_id
        self._keys = list(dict.fromkeys(keys))
        self._in_flight = dict.fromkeys(self._keys, 0)
        self._last_used = dict.fromkeys(self._keys, -1)
        self._benched: set[str] = set()
        self._clock = itertools.count()

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def live_keys(self) -> list[str]:
        """Keys not benched."""
        return [key for key in self._keys if key not in self._benched]

    def in_flight(self, key: str) -> int:
        return self._in_flight[key]

    def get_least_loaded_key(self) -> str:
        """The live key with the fewest requests in flight (does not count it as in flight)."""
        live = self.live_keys
        if not live:
            raise NoUsableKey(f"all {len(self._keys)} API key(s) were rejected by the server")
        return min(live, key=lambda key: (self._in_flight[key], self._last_used[key]))

    def acquire(self) -> str:
        """Pick the least-loaded live key and count one request in flight on it."""
        key = self.get_least_loaded_key()
        self._in_flight[key] += 1
        self._last_used[key] = next(self._clock)
        return key

    def release(self, key: str) -> None:
        """The request that `acquire` returned `key` for has finished."""
        self._in_flight[key] = max(0, self._in_flight[key] - 1)

    def bench(self, key: str, *, status: int, model: str) -> None:
        """Stop using `key`: the server rejected it (401/403)."""
        if key in self._benched:
            return
        self._benched.add(key)
        log.warning(
            "llm.api_key_benched",
            model=model,
            provider=self.provider_id or None,
            key=redact(key),
            status=status,
            live_keys=len(self.live_keys),
        )
