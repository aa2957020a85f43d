"""Which agents a worker serves: `llm_chat` functions addressed as `module:function`."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from orchestrator.errors import ConfigError, UnknownAgent
from orchestrator.runtime.agent import AGENT_ATTRIBUTE, AgentSpec, agent_spec


class AgentRegistry:
    """Agents found in the modules a worker was started with."""

    def __init__(self, modules: Iterable[str] = ()) -> None:
        self._agents: dict[str, AgentSpec] = {}
        self.modules: list[str] = list(modules)
        for module in self.modules:
            self.add_module(module)

    def add_module(self, module_name: str) -> list[str]:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import agents module {module_name!r}: {exc}") from exc
        found = []
        for attr, value in vars(module).items():
            spec = getattr(value, AGENT_ATTRIBUTE, None)
            if spec is not None:
                address = f"{module_name}:{attr}"
                self._agents[address] = agent_spec(value)
                found.append(address)
        if not found:
            raise ConfigError(f"module {module_name!r} defines no llm_chat agents")
        return found

    @property
    def addresses(self) -> list[str]:
        return sorted(self._agents)

    def resolve(self, address: str) -> AgentSpec:
        try:
            return self._agents[address]
        except KeyError:
            served = ", ".join(self.addresses) or "none"
            raise UnknownAgent(f"unknown agent {address!r}: this worker serves {served}") from None
