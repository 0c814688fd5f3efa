"""How the gateway's long-lived parts start and stop, and the one way to end background tasks.

The daemon keeps its parts in one ordered list of :class:`Service` and stops them in reverse, so
a part is only ever stopped after everything that uses it; :func:`cancel_and_wait` is how a part
ends its own tasks, so none is left running (or failing unseen) after ``stop()`` returns.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class Service(Protocol):
    """A part with background work: ``start()`` once its dependencies have started, ``stop()``
    before they stop. ``stop()`` must be safe to call again and after a failed ``start()``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (None and finished ones are fine) and wait until every one has ended.

    A task's CancelledError is its expected end and is swallowed, like any other exception,
    which is logged rather than raised: a stop must go on to stop the rest.
    """
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    for task in live:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.exception("background task %s failed", name)
