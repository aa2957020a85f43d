"""`Tool.from_function`: lm-deluge's way to offer a plain function to the model.

It is the project's own `@tool` underneath (`orchestrator.runtime.tools.Tool`): the
docstring's first paragraph is the description, type hints and `Args:` lines the JSON
schema, and sync functions run in a thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.runtime.tools import Tool as _RuntimeTool


class Tool(_RuntimeTool):
    """A function the model may call in `LLMClient.run_agent_loop`."""

    @classmethod
    def from_function(
        cls, func: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> Tool:
        """A tool from a sync or async function with type hints and a docstring."""
        return cls(name=name, description=description, func=func)
