"""Bearer API keys mapped to tenants.

With no keys configured the API is open: every caller is the same anonymous principal
and sees every run. With keys, a caller presents `Authorization: Bearer KEY` (or, on the
Server-Sent Events routes, `?access_token=KEY`, because a browser's EventSource cannot
set headers) and sees only the runs submitted under its tenant.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.errors import ConfigError

__all__ = ["ApiKeys", "Principal", "parse_api_key", "parse_api_keys"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, or nobody in particular when the API is open."""

    tenant: str | None

    def may_see(self, owner: str | None) -> bool:
        """True if a run owned by `owner` is visible to this caller."""
        return self.tenant is None or owner == self.tenant


OPEN = Principal(tenant=None)


class ApiKeys:
    """The configured key -> tenant table; empty means the API is open."""

    def __init__(self, keys: Mapping[str, str] | None = None) -> None:
        table = dict(keys or {})
        for key, tenant in table.items():
            if not key or not tenant:
                raise ConfigError("API keys and tenants must be non-empty strings")
            if "{" in tenant or "}" in tenant:
                raise ConfigError(f"tenant names may not contain '{{' or '}}': {tenant!r}")
        self._keys = table

    @property
    def open(self) -> bool:
        return not self._keys

    def tenant_for(self, presented: str) -> str | None:
        """The tenant of a presented key, or None if it is not a configured key."""
        found = None
        encoded = presented.encode()
        # Compare against every key so the time taken says nothing about which matched.
        for key, tenant in self._keys.items():
            if hmac.compare_digest(encoded, key.encode()):
                found = tenant
        return found


def parse_api_key(spec: str) -> tuple[str, str]:
    """`KEY:TENANT` (as given to `orchestrator api --api-key`) -> (key, tenant)."""
    key, sep, tenant = spec.rpartition(":")
    if not sep or not key or not tenant:
        raise ConfigError(f"--api-key wants KEY:TENANT, got {spec!r}")
    return key, tenant


def parse_api_keys(text: str) -> dict[str, str]:
    """`KEY:TENANT` entries separated by commas or new lines (ORCHESTRATOR_API_KEYS, or
    the file ORCHESTRATOR_API_KEYS_FILE names); blank lines and `#` comments are skipped.
    A malformed entry is a ConfigError that names its line, never the key."""
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        for entry in line.split("#", 1)[0].split(","):
            spec = entry.strip()
            if not spec:
                continue
            key, sep, tenant = spec.rpartition(":")
            if not sep or not key or not tenant:
                raise ConfigError(f"API keys: entry on line {number} is not KEY:TENANT")
            keys[key] = tenant
    return keys
