"""The background loop of a long-lived actor (the broker, the GPU guards, the guards' keeper)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["keep_running"]


def keep_running(task: asyncio.Task[None] | None, step: Callable[[], Any], interval_s: float, *,
                 log: logging.Logger, what: str) -> asyncio.Task[None]:
    """``task`` while it still runs, else a new task calling ``step`` every ``interval_s`` seconds.

    Call it from the actor's event loop; ``step`` may be a coroutine function. One failed step is
    logged (``what`` names it) and never stops the loop.
    """
    if task is not None and not task.done():
        return task

    async def forever() -> None:
        while True:
            try:
                result = step()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("%s failed", what)
            await asyncio.sleep(interval_s)

    return asyncio.get_running_loop().create_task(forever())
