"""Small asyncio helpers shared by the adapters and workers."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a helper task and wait until it has ended.

    The task's own CancelledError is absorbed, but a cancellation aimed at the caller
    (which `contextlib.suppress(CancelledError)` would swallow too) is re-raised.
    """
    if task is None or task.done():
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
