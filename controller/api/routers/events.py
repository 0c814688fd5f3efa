"""``/api/v1/events``: the event bus as Server-Sent Events, for the console and scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from controller.api.deps import PREFIX, ApiServices, Services, Viewer
from controller.api.models import AUTH_ERRORS, errors
from controller.core.actors import Actor
from controller.core.events import Event

router = APIRouter(prefix=PREFIX, tags=["system"])


def _sse(event: Event, seq: int) -> str:
    data = json.dumps({**event.wire(), "ts": event.ts}, ensure_ascii=False, default=str)
    return f"id: {seq}\nevent: {event.kind}\ndata: {data}\n\n"


async def _event_stream(services: ApiServices, actor: Actor) -> AsyncIterator[str]:
    """SSE from the event bus, with a keep-alive comment so proxies and clients see the link live.

    The stream lives as long as the client wants, so the token that opened it is checked again
    before every event and every ``token_check_s``: ``ebc token revoke`` (another process) ends an
    open stream within seconds instead of letting it flow on.
    """
    events = services.bus.subscribe().__aiter__()
    stopping = asyncio.ensure_future(services.stopping.wait())
    pending: asyncio.Future[Event] | None = None
    loop = asyncio.get_running_loop()
    seq = 0
    next_keepalive = next_check = loop.time()
    try:
        yield ": connected\n\n"
        next_keepalive += services.keepalive_s
        next_check += services.token_check_s
        while not services.stopping.is_set():
            if pending is None:
                pending = asyncio.ensure_future(events.__anext__())
            timeout = max(0.0, min(next_keepalive, next_check) - loop.time())
            done, _ = await asyncio.wait({pending, stopping}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            now = loop.time()
            if pending in done or now >= next_check:
                if not _still_valid(services, actor):
                    yield ": token revoked\n\n"
                    return
                next_check = now + services.token_check_s
            if pending in done:
                event, pending = pending.result(), None
                seq += 1
                yield _sse(event, seq)
            elif now >= next_keepalive:
                yield ": keep-alive\n\n"
                next_keepalive = now + services.keepalive_s
    finally:
        stopping.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()


def _still_valid(services: ApiServices, actor: Actor) -> bool:
    """The stream's token is still active (revoked or deleted ends it)."""
    return actor.token_id is None or services.store.token_active(actor.token_id)


@router.get("/events", response_class=StreamingResponse, responses={
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
          "description": "event: <kind> / data: <JSON> blocks and : keep-alive comments"},
    **errors(*AUTH_ERRORS)})
async def events(actor: Viewer, services: Services) -> StreamingResponse:
    """Server-Sent Events (``event: <kind>``, JSON data). Use fetch() with the Authorization header.
    The stream ends within ``token_check_s`` of its token being revoked."""
    return StreamingResponse(_event_stream(services, actor), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
