"""One settings object, built at the edges (CLI, worker, API factory) and passed down.

The library never reads the environment itself; `Settings.from_env()` is for entry points.
Every field `name` is read from `ORCHESTRATOR_<NAME>`, or from the file that
`ORCHESTRATOR_<NAME>_FILE` names (how container platforms hand out secrets: a mounted
file, never an argument that `ps` shows).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from orchestrator.errors import ConfigError

ENV_PREFIX = "ORCHESTRATOR_"
FILE_SUFFIX = "_FILE"


class Settings(BaseModel):
    """Everything a client, worker or API process needs to agree on."""

    # redis://, rediss://, unix:// or redis+sentinel://host:port[,host:port]/service[/db]
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key starts with this, so several deployments (or tests) share a server.
    key_prefix: str = "orc"

    # Event streams: trimmed with MAXLEN ~ while a run is live, expired once it ends.
    stream_maxlen: int = Field(default=100_000, ge=100)
    # How many outputs written together (a publisher's batch, a run's end, a batch of a
    # parent's forks' statuses) share one stream entry: one XADD (more than 64 is taken
    # as 64). 1 writes one output per entry (v1), which readers older than the v2 entry
    # format read too: set it to 1 while upgrading from such a build, until every reader
    # (clients, API) reads v2 entries. `stream_maxlen` counts entries.
    stream_items_per_entry: int = Field(default=64, ge=1)
    stream_retention_s: int = Field(default=86_400, ge=1)
    # Run records (status, result) are kept this long after the run ends.
    run_retention_s: int = Field(default=7 * 86_400, ge=1)

    # SelfReference memory (on workers): every memory record expires this long after its
    # last write, and is bounded in size. A transcript over the byte bound loses its oldest
    # non-system messages (with a warning); an experience over the count bound is refused
    # with an error the model reads (it can forget one first).
    memory_retention_s: int = Field(default=7 * 86_400, ge=1)
    memory_max_message_bytes: int = Field(default=1 << 20, ge=1024)
    memory_max_experiences: int = Field(default=200, ge=1)

    # Session journals (what a tool keeps for a session: PyRepl's executed inputs, replayed
    # to rebuild an interpreter on another worker). Each expires this long after its last
    # write; entries over the bounds are refused (the journal is then incomplete and the
    # interpreter's state cannot be rebuilt elsewhere: the model is told so).
    journal_retention_s: int = Field(default=86_400, ge=1)
    journal_max_entries: int = Field(default=500, ge=1)
    journal_max_bytes: int = Field(default=1 << 20, ge=1024)

    # Redis timeouts. Every connection gives up waiting for an answer after its timeout, so
    # a Redis that stops answering is a StoreUnavailable error (a 503 from the API), never a
    # hang. Blocking stream reads wait their block time plus redis_timeout_s.
    redis_connect_timeout_s: float = Field(default=2.0, gt=0)
    redis_timeout_s: float = Field(default=5.0, gt=0)
    # The API's connections (connect and each reply): it answers 503 within about this long.
    api_redis_timeout_s: float = Field(default=1.0, gt=0)

    # Workers
    concurrency: int = Field(default=10, ge=1)
    # A running turn renews its lease every lease_ttl_s / 3; a turn whose lease lapses is
    # resumed elsewhere. Recovery time after a SIGKILL is about lease_ttl_s + reap_interval_s.
    lease_ttl_s: float = Field(default=6.0, gt=0)
    reap_interval_s: float = Field(default=1.0, gt=0)
    # A turn that keeps killing its workers ends with an error after this many attempts.
    max_attempts: int = Field(default=3, ge=1)
    # A turn that cannot reach Redis hands its run back and a later attempt resumes it from
    # its checkpoint; those attempts do not count towards max_attempts, up to this many.
    max_handbacks: int = Field(default=20, ge=0)
    # Leases are renewed from a thread of their own, so a busy event loop never loses them;
    # but a loop that has not turned at all for this long is stuck, and its leases lapse.
    loop_stall_s: float = Field(default=60.0, gt=0)
    abort_poll_s: float = Field(default=0.05, gt=0, le=0.05)
    # Fallback poll of the queue; normally workers are woken by a publish when work arrives.
    poll_delay_s: float = Field(default=0.5, gt=0)
    heartbeat_s: float = Field(default=2.0, gt=0)
    # On SIGTERM running turns get this long to finish before they are handed back.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Forks: how deep a fork tree may grow (the root is depth 0) and how many forks one
    # agent call may spawn. Exceeding either is a clear tool error for the model.
    max_fork_depth: int = Field(default=3, ge=0)
    max_forks_per_agent: int = Field(default=64, ge=1)
    # Safety net for a fork whose worker died between ending and waking its parent:
    # every worker re-checks waiting runs this often (the normal wake-up is a push).
    waiting_sweep_s: float = Field(default=5.0, gt=0)
    # arq's own job timeout: far above any turn; crash recovery does not depend on it.
    job_timeout_s: int = Field(default=24 * 3600, ge=1)
    # `orchestrator worker` without --agents serves these modules (comma-separated).
    worker_agents: tuple[str, ...] = ()
    # The host name a worker reports (heartbeat, worker id); default: the machine's.
    worker_host: str = ""
    # A directory the worker keeps its local state in (none: off): it touches `alive` on
    # every heartbeat (`worker --alive`, a liveness probe) and stops taking jobs once a
    # `drain` file appears there (`worker --drain`, a preStop hook).
    worker_state_dir: str = ""

    # The API (`orchestrator api`): where it listens, and its bearer keys, as
    # `KEY:TENANT` entries separated by commas or new lines (no keys: the API is open).
    # Give them as ORCHESTRATOR_API_KEYS_FILE (a mounted secret) rather than on argv.
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    api_keys: SecretStr = SecretStr("")

    # Logs: JSON lines when stderr is not a terminal ("auto"), or always "json" / "console".
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("worker_agents", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, overrides: Mapping[str, object] | None = None
    ) -> Settings:
        """Build settings from ORCHESTRATOR_* variables (e.g. ORCHESTRATOR_REDIS_URL, or
        ORCHESTRATOR_REDIS_URL_FILE naming a file that holds it); `overrides` (e.g. from
        command-line flags) win over the environment. Empty variables count as unset.
        Setting both a variable and its _FILE is a ConfigError, and so is a _FILE that
        cannot be read."""
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        for name in cls.model_fields:
            variable = env_variable(name)
            # An empty variable is an unset one (`${X:-}` in a compose file gives "").
            raw = source.get(variable) or None
            path = source.get(variable + FILE_SUFFIX) or None
            if raw is not None and path is not None:
                raise ConfigError(f"set {variable} or {variable}{FILE_SUFFIX}, not both")
            if path is not None:
                raw = _read_secret(variable + FILE_SUFFIX, path)
            if raw is not None:
                values[name] = raw
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.model_validate(values)


def env_variable(field: str) -> str:
    """The environment variable of a Settings field: `ORCHESTRATOR_<FIELD>`."""
    return ENV_PREFIX + field.upper()


def _read_secret(variable: str, path: str) -> str:
    try:
        # One trailing newline is how editors and `echo` end a file, not part of the value.
        return Path(path).read_text(encoding="utf-8").removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{variable}: cannot read {path!r}: {exc}") from exc
