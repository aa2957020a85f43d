"""API keys for one model: the least-loaded key serves the next request; rejected keys rest.

A key the server answers 401/403 for is benched for a cool-down (`cooldown_s`, 60 s by
default), then tried again: a key revoked for good fails one request per cool-down, and a
key that was rejected by a passing fault (a provider's hiccup, a key rotated back in)
recovers without a restart. Keys are named by their place in the pool ("API key #2 of 3")
in messages, and by a four-character fingerprint in logs; never whole.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

DEFAULT_COOLDOWN_S = 60.0


def redact(key: str) -> str:
    """A key's printable fingerprint: enough to tell keys apart in logs, not to use them."""
    return f"...{key[-4:]}" if len(key) > 8 else "***"


def scrub(text: str, key: str) -> str:
    """`text` with every copy of `key` replaced by its fingerprint (servers may echo it)."""
    return text.replace(key, redact(key)) if key else text


def format_wait(seconds: float) -> str:
    """A short human duration: `0.4 s`, `12 s`."""
    return f"{seconds:.1f} s" if seconds < 10 else f"{math.ceil(seconds)} s"


@dataclass(frozen=True)
class BenchedKey:
    """A key resting after a 401/403, named by its place in the pool (1-based), never
    by its text."""

    index: int
    keys: int
    status: int
    retry_in_s: float

    @property
    def label(self) -> str:
        return f"API key #{self.index} of {self.keys}"


class NoUsableKey(Exception):
    """No key may be used now: every key is benched (or was rejected by this call).

    `retry_in_s` is when the earliest benched key is tried again (None if no key is benched).
    """

    def __init__(self, message: str, *, earliest: BenchedKey | None) -> None:
        super().__init__(message)
        self.earliest = earliest

    @property
    def retry_in_s(self) -> float | None:
        return None if self.earliest is None else self.earliest.retry_in_s


@dataclass
class _Rest:
    until: float
    status: int


class APIKeyPool:
    """Hands out the key with the fewest requests in flight.

    Ties go to the key used least recently, so sequential calls rotate through the keys.
    `provider_id` only labels log lines (SimpleLLMFunc's `APIKeyPool(keys, provider_id)`).
    `cooldown_s` is how long a key rejected with 401/403 rests before it is tried again.
    """

    def __init__(
        self,
        api_keys: str | Sequence[str],
        provider_id: str = "",
        *,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        keys = [api_keys] if isinstance(api_keys, str) else list(api_keys)
        if not keys:
            raise ValueError("an API key pool needs at least one key ('' for servers without auth)")
        if not cooldown_s >= 0:
            raise ValueError(f"cooldown_s must be 0 or more seconds, not {cooldown_s!r}")
        self.provider_id = provider_id
        self.cooldown_s = float(cooldown_s)
        self._keys = list(dict.fromkeys(keys))
        self._index = {key: position for position, key in enumerate(self._keys, start=1)}
        self._in_flight = dict.fromkeys(self._keys, 0)
        self._last_used = dict.fromkeys(self._keys, -1)
        self._resting: dict[str, _Rest] = {}
        self._clock = clock
        self._uses = itertools.count()

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    @property
    def live_keys(self) -> list[str]:
        """Keys not resting now."""
        self._wake_rested()
        return [key for key in self._keys if key not in self._resting]

    def in_flight(self, key: str) -> int:
        return self._in_flight[key]

    def label(self, key: str) -> str:
        """How messages name `key`: its place in the pool, e.g. `API key #2 of 3`."""
        return f"API key #{self._index[key]} of {len(self._keys)}"

    def benched(self) -> list[BenchedKey]:
        """The keys resting now, in pool order, with the seconds until each is tried again."""
        self._wake_rested()
        now = self._clock()
        return [
            BenchedKey(self._index[key], len(self._keys), rest.status, rest.until - now)
            for key, rest in sorted(self._resting.items(), key=lambda item: self._index[item[0]])
        ]

    def get_least_loaded_key(self, exclude: Collection[str] = ()) -> str:
        """The live key with the fewest requests in flight, skipping `exclude` (does not
        count it as in flight). Raises `NoUsableKey` when there is none."""
        live = [key for key in self.live_keys if key not in exclude]
        if not live:
            raise self._none_usable()
        return min(live, key=lambda key: (self._in_flight[key], self._last_used[key]))

    def acquire(self, exclude: Collection[str] = ()) -> str:
        """Pick the least-loaded live key (not in `exclude`) and count one request in
        flight on it."""
        key = self.get_least_loaded_key(exclude)
        self._in_flight[key] += 1
        self._last_used[key] = next(self._uses)
        return key

    def release(self, key: str) -> None:
        """The request that `acquire` returned `key` for has finished."""
        self._in_flight[key] = max(0, self._in_flight[key] - 1)

    def bench(self, key: str, *, status: int, model: str) -> BenchedKey:
        """Rest `key` for the cool-down: the server rejected it (401/403). A key already
        resting keeps its deadline (requests in flight on it fail one after another)."""
        now = self._clock()
        rest = self._resting.get(key)
        fresh = rest is None or rest.until <= now
        if rest is None or fresh:
            rest = self._resting[key] = _Rest(now + self.cooldown_s, status)
        benched = BenchedKey(self._index[key], len(self._keys), rest.status, rest.until - now)
        if fresh:
            log.warning(
                "llm.api_key_benched",
                model=model,
                provider=self.provider_id or None,
                key=redact(key),
                key_index=benched.index,
                keys=benched.keys,
                status=status,
                retry_in_s=round(benched.retry_in_s, 3),
                live_keys=len(self.live_keys),
            )
        return benched

    def _wake_rested(self) -> None:
        now = self._clock()
        for key in [key for key, rest in self._resting.items() if rest.until <= now]:
            del self._resting[key]
            log.info(
                "llm.api_key_restored",
                provider=self.provider_id or None,
                key=redact(key),
                key_index=self._index[key],
                keys=len(self._keys),
            )

    def _none_usable(self) -> NoUsableKey:
        resting = self.benched()
        if not resting:
            return NoUsableKey(
                f"no API key is left to try (all {len(self._keys)} were tried)", earliest=None
            )
        earliest = min(resting, key=lambda benched: benched.retry_in_s)
        keys = len(self._keys)
        count = "the API key was" if keys == 1 else f"all {keys} API keys were"
        return NoUsableKey(
            f"{count} rejected (HTTP {earliest.status}) and rest after it; "
            f"{earliest.label} is tried again in {format_wait(earliest.retry_in_s)}",
            earliest=earliest,
        )
