"""The arq job functions: decode, call the runtime, encode. Nothing else lives here."""

from __future__ import annotations

from typing import Any

from workers.turns import TurnExecutor

EXECUTOR = "orchestrator_executor"


async def run_turn(ctx: dict[str, Any], payload: Any) -> dict[str, Any]:
    """Run one attempt of an agent turn. `payload` is a RunRequest as JSON; it is validated
    before use and a malformed one is rejected (recorded, not raised)."""
    executor: TurnExecutor = ctx[EXECUTOR]
    return await executor.execute(payload)
