"""provider.json: SimpleLLMFunc's file of models per provider, validated.

    {
      "openai": [
        {"model_name": "gpt-4o", "api_keys": ["sk-..."], "base_url": "https://api.openai.com/v1",
         "max_retries": 5, "retry_delay": 1.0, "rate_limit_capacity": 10,
         "rate_limit_refill_rate": 1.0, "context_window": 128000, "key_cooldown_s": 60}
      ]
    }

Only `model_name`, `api_keys` and `base_url` are required. Unknown fields are ignored with
a warning naming them: files written for SimpleLLMFunc may carry fields we do not use, and
a misspelt setting is still reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import ConfigError
from orchestrator.llm.key_pool import DEFAULT_COOLDOWN_S

_log = structlog.get_logger(__name__)

# SimpleLLMFunc's default context window (tokens) for a model that does not give one.
DEFAULT_CONTEXT_WINDOW = 200_000


class ModelConfig(BaseModel):
    """One model entry of provider.json: what `OpenAICompatible` needs to reach it."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model_name: str = Field(min_length=1)
    api_keys: list[str] = Field(min_length=1)
    base_url: str = Field(min_length=1)
    max_retries: int = Field(default=5, ge=0)
    retry_delay: float = Field(default=1.0, ge=0)
    max_retry_delay: float = Field(default=30.0, ge=0)
    timeout: float = Field(default=60.0, gt=0)
    # A key answered 401/403 rests this long, then is tried again.
    key_cooldown_s: float = Field(default=DEFAULT_COOLDOWN_S, ge=0)
    rate_limit_capacity: int | None = Field(default=None, ge=1)
    rate_limit_refill_rate: float | None = Field(default=None, gt=0)
    context_window: int | None = Field(default=None, gt=0)
    # Default request parameters sent with every call (temperature, max_tokens, ...).
    llm_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _one_key_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _rate_limit_complete(self) -> Self:
        if (self.rate_limit_capacity is None) != (self.rate_limit_refill_rate is None):
            raise ValueError("rate_limit_capacity and rate_limit_refill_rate go together")
        return self


def load_provider_file(path: str | Path) -> dict[str, list[ModelConfig]]:
    """Read and validate a provider.json. Every problem is a `ConfigError` naming the file
    and the entry (`provider[index]`, with its model name when it has one)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: provider file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read provider file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected an object of provider -> list of models")
    return {provider: _load_provider(path, provider, models) for provider, models in raw.items()}


def _load_provider(path: Path, provider: str, models: Any) -> list[ModelConfig]:
    if not isinstance(models, list):
        raise ConfigError(f"{path}: provider {provider!r} must be a list of model entries")
    configs: list[ModelConfig] = []
    for index, entry in enumerate(models):
        where = f"{provider}[{index}]"
        if isinstance(entry, dict) and isinstance(entry.get("model_name"), str):
            where += f" (model {entry['model_name']!r})"
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - set(ModelConfig.model_fields))
            if unknown:
                _log.warning(
                    "provider.json: unknown fields ignored",
                    file=str(path),
                    entry=where,
                    fields=unknown,
                )
        try:
            config = ModelConfig.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {where}: {_describe(exc)}") from exc
        if any(seen.model_name == config.model_name for seen in configs):
            raise ConfigError(f"{path}: {where}: model listed twice for provider {provider!r}")
        configs.append(config)
    return configs


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "entry"
        problems.append(f"{field}: {error['msg']}")
    return "; ".join(problems)
