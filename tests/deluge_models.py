"""Point registered model names at scripted models, for the lm-deluge client's tests.

`use_scripted(registry, {"claude-4-sonnet": llm_a, "gpt-4.1": llm_b})` registers each
name at its scripted model's base URL, keeping the built-in provider and prices, so
`LLMClient("claude-4-sonnet")` speaks the Anthropic Messages API to it, and the others the
OpenAI format. `restore_registry` (a fixture body) undoes every registration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from orchestrator.deluge import ModelRegistry, ModelSpec, default_registry
from orchestrator.mock_llm.testing import MockLLMThread


def use_scripted(
    servers: Mapping[str, MockLLMThread], registry: ModelRegistry | None = None
) -> dict[str, ModelSpec]:
    registry = registry or default_registry
    made: dict[str, ModelSpec] = {}
    for name, server in servers.items():
        spec = registry.get(name).model_copy(
            update={"api_base": server.base_url, "api_key_env": None}
        )
        made[name] = registry.register(spec)
    return made


def restore_registry() -> Iterator[None]:
    saved = default_registry.copy()
    try:
        yield
    finally:
        default_registry._specs = saved._specs
