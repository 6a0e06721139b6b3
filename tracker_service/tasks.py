"""Stopping the gateway's background tasks (samplers' workers and pollers) at shutdown."""

from __future__ import annotations

import asyncio
import contextlib


async def stop_task(task: asyncio.Task | None) -> None:
    """Cancel `task` and wait until it has stopped; None or a finished task is a no-op."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
