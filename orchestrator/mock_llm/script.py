"""The script format of the scripted model (docs/scripted-model.md), validated by pydantic.

Every model forbids unknown keys, so a typo in a script (`last_rol`) fails loudly with
the path of the bad field instead of silently matching everything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from orchestrator.errors import ConfigError

FaultType = Literal[
    "http_429",
    "http_500",
    "http_503",
    "http_400",
    "http_401",
    "http_403",
    "drop_mid_stream",
    "malformed_chunk",
    "stall",
]
Role = Literal["system", "user", "assistant", "tool"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latency(_Strict):
    """Milliseconds before the first chunk (or a non-streamed answer) and between chunks."""

    first_token_ms: float = Field(default=0, ge=0)
    token_ms: float = Field(default=0, ge=0)

    def overridden_by(self, other: Latency | None) -> Latency:
        """This latency with the fields `other` sets explicitly taking precedence."""
        if other is None:
            return self
        return self.model_copy(update=other.model_dump(exclude_unset=True))


class Match(_Strict):
    """Conditions on the request; all given ones must hold. String tests ignore case
    (except `api_key`)."""

    last_user_contains: str | None = None
    last_role: Role | None = None
    last_tool_result_contains: str | None = None
    any_contains: str | None = None
    system_contains: str | None = None
    tool_results_since_user: int | None = Field(default=None, ge=0)
    tools_offered: str | None = None
    no_tools_offered: bool | None = None
    regex: str | None = None
    # The request's bearer key equals this (exactly: keys are case-sensitive).
    api_key: str | None = None

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid Python regex: {exc}") from exc
        return value


class ToolCallSpec(_Strict):
    """One scripted tool call; string `arguments` are sent verbatim (even if not JSON)."""

    name: str = Field(min_length=1)
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class UsageSpec(_Strict):
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)


class Reply(_Strict):
    content: str | None = None
    tool_calls: list[ToolCallSpec] = Field(default_factory=list)
    usage: UsageSpec | None = None
    finish_reason: str | None = None


class Fault(_Strict):
    """Makes a matched request fail; `times: null` fails every matched request."""

    type: FaultType
    times: int | None = Field(default=1, ge=1)
    retry_after: float = Field(default=1, ge=0)
    after_chunks: int = Field(default=2, ge=0)
    delay_s: float = Field(default=30, ge=0)
    # An HTTP fault (http_4xx/5xx) is answered this many milliseconds after the request.
    after_ms: float = Field(default=0, ge=0)


class Rule(_Strict):
    name: str | None = None
    match: Match = Field(default_factory=Match)
    reply: Reply = Field(default_factory=Reply)
    latency: Latency | None = None
    fault: Fault | None = None
    times: int | None = Field(default=None, ge=1)


class Script(_Strict):
    """A whole script: rules tried in order, then the fallback reply."""

    model: str = "scripted"
    # Validate requests like llama.cpp's servers (orchestrator/mock_llm/strict.py).
    strict: bool = False
    latency: Latency = Field(default_factory=Latency)
    rules: list[Rule] = Field(default_factory=list)
    fallback: Reply = Field(
        default_factory=lambda: Reply(content="I am the scripted model; no rule matched.")
    )


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the field path (`rules.0.match.last_rol`)."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(script)"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def parse_script(data: Script | Mapping[str, Any]) -> Script:
    """Validate a script given as a dict (a `Script` passes through unchanged)."""
    if isinstance(data, Script):
        return data
    try:
        return Script.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid script: {describe_validation_error(exc)}") from exc


def _read_packaged(name: str) -> str | None:
    filename = name if name.endswith(".json") else f"{name}.json"
    resource = resources.files("orchestrator.mock_llm").joinpath("scripts", filename)
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def load_script(source: str | Path | Mapping[str, Any] | Script) -> Script:
    """Load and validate a script from a JSON file, a dict, or a packaged name (`"demo"`).

    A string that is not an existing file but names a script shipped in
    `orchestrator/mock_llm/scripts/` loads that one. Raises `ConfigError` with the path
    of every bad field when the script is invalid.
    """
    if isinstance(source, Script | Mapping):
        return parse_script(source)
    path = Path(source)
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        packaged = _read_packaged(str(source))
        if packaged is None:
            raise ConfigError(f"script file not found: {source}")
        text = packaged
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"script {source} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"script {source} must be a JSON object")
    return parse_script(data)
