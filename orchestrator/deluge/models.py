"""Models by name: provider, endpoint, key variable and price per million tokens.

`register_model(...)` adds (or replaces) a name in the default registry, which every
`LLMClient` uses unless it is given a `ModelRegistry` of its own. Built-in names cover the
seed's models; prices are list prices in USD per million tokens (check your provider's).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import ConfigError

Provider = Literal["openai", "anthropic"]


class ModelSpec(BaseModel):
    """One registered model. `model_id` is the provider's name for it (default: `name`);
    `api_key_env` names the environment variable holding the key (None: no key)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str = Field(min_length=1)
    provider: Provider = "openai"
    api_base: str = Field(min_length=1)
    model_id: str = ""
    api_key_env: str | None = None
    input_cost: float = Field(default=0.0, ge=0)  # USD per million input tokens
    output_cost: float = Field(default=0.0, ge=0)  # USD per million output tokens

    @property
    def provider_model(self) -> str:
        return self.model_id or self.name

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """USD for this much usage."""
        return (input_tokens * self.input_cost + output_tokens * self.output_cost) / 1_000_000

    def api_key(self, environ: Mapping[str, str]) -> str:
        """The key from `environ` ("" when the model needs none)."""
        if self.api_key_env is None:
            return ""
        key = environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"model {self.name!r}: set {self.api_key_env} to its API key")
        return key


_OPENAI = "https://api.openai.com/v1"
_ANTHROPIC = "https://api.anthropic.com/v1"
_GEMINI = "https://generativelanguage.googleapis.com/v1beta/openai"
_GROQ = "https://api.groq.com/openai/v1"

BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(name="gpt-4o-mini", api_base=_OPENAI, api_key_env="OPENAI_API_KEY",
              input_cost=0.15, output_cost=0.60),
    ModelSpec(name="gpt-4o", api_base=_OPENAI, api_key_env="OPENAI_API_KEY",
              input_cost=2.50, output_cost=10.0),
    ModelSpec(name="gpt-4.1", api_base=_OPENAI, api_key_env="OPENAI_API_KEY",
              input_cost=2.0, output_cost=8.0),
    ModelSpec(name="gpt-4.1-mini", api_base=_OPENAI, api_key_env="OPENAI_API_KEY",
              input_cost=0.40, output_cost=1.60),
    ModelSpec(name="claude-4-sonnet", provider="anthropic", api_base=_ANTHROPIC,
              model_id="claude-sonnet-4-20250514", api_key_env="ANTHROPIC_API_KEY",
              input_cost=3.0, output_cost=15.0),
    ModelSpec(name="claude-4-opus", provider="anthropic", api_base=_ANTHROPIC,
              model_id="claude-opus-4-20250514", api_key_env="ANTHROPIC_API_KEY",
              input_cost=15.0, output_cost=75.0),
    ModelSpec(name="claude-3.5-haiku", provider="anthropic", api_base=_ANTHROPIC,
              model_id="claude-3-5-haiku-20241022", api_key_env="ANTHROPIC_API_KEY",
              input_cost=0.80, output_cost=4.0),
    ModelSpec(name="gemini-2.0-flash", api_base=_GEMINI, api_key_env="GEMINI_API_KEY",
              input_cost=0.10, output_cost=0.40),
    ModelSpec(name="llama-3.3-70b", api_base=_GROQ, model_id="llama-3.3-70b-versatile",
              api_key_env="GROQ_API_KEY", input_cost=0.59, output_cost=0.79),
)  # fmt: skip


class ModelRegistry:
    """Name -> `ModelSpec`. `ModelRegistry()` starts with the built-in names."""

    def __init__(self, specs: Mapping[str, ModelSpec] | None = None) -> None:
        self._specs: dict[str, ModelSpec] = (
            dict(specs) if specs is not None else {s.name: s for s in BUILTIN_MODELS}
        )

    def register(self, spec: ModelSpec) -> ModelSpec:
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs))
            raise ConfigError(
                f"unknown model {name!r}: register it with register_model() (known: {known})"
            ) from None

    def copy(self) -> ModelRegistry:
        return ModelRegistry(self._specs)

    def reset(self) -> None:
        """Back to the built-in names only (tests)."""
        self._specs = {s.name: s for s in BUILTIN_MODELS}

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._specs))


# The one process-wide registry (what `register_model` changes); `reset()` restores it.
default_registry = ModelRegistry()


def register_model(
    name: str,
    *,
    provider: Provider = "openai",
    api_base: str,
    model_id: str = "",
    api_key_env: str | None = None,
    input_cost: float = 0.0,
    output_cost: float = 0.0,
    registry: ModelRegistry | None = None,
) -> ModelSpec:
    """Add a model by name (replacing one of that name): where it lives, which variable
    holds its key, and its price in USD per million input and output tokens."""
    spec = ModelSpec(
        name=name,
        provider=provider,
        api_base=api_base,
        model_id=model_id,
        api_key_env=api_key_env,
        input_cost=input_cost,
        output_cost=output_cost,
    )
    return (registry or default_registry).register(spec)
