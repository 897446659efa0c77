"""``GET /events``: the store's changes from now on as server-sent events (``ready`` once subscribed,
then one ``change`` per event with its ``id:``, ``: ping`` comments while idle, and ``error`` before the
server drops a client that fell more than ``ServerConfig.sse_queue`` events behind).

A client that reconnects with ``Last-Event-ID`` (or ``?after=``) is replayed the events after that id
first, as far as the server's event hub or the store's change log still holds them (see ``EventHub``)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import Header, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from labvault.domain import ChangeEvent
from labvault.errors import InvalidArgumentError
from labvault.server.deps import Reader, state_of
from labvault.server.protocol import api_router
from labvault.server.state import EventHub, Subscriber

router = api_router()


def _wanted(event: ChangeEvent, kinds: set[str] | None, experiment_id: str | None,
            run_id: str | None) -> bool:
    return not ((kinds is not None and event.kind not in kinds)
                or (experiment_id is not None and event.experiment_id != experiment_id)
                or (run_id is not None and event.run_id != run_id))


async def _stream(hub: EventHub, sub: Subscriber, interval: float, kinds: set[str] | None,
                  experiment_id: str | None, run_id: str | None) -> AsyncIterator[bytes]:
    """The event stream of one subscriber, until it overflows or the client goes away."""
    try:
        yield b"event: ready\ndata: {}\n\n"
        backlog = deque(sub.backlog)
        while True:
            if backlog:
                event = backlog.popleft()
            else:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), interval)
                except TimeoutError:
                    if sub.overflowed:
                        break
                    yield b": ping\n\n"
                    continue
            if not _wanted(event, kinds, experiment_id, run_id):
                continue
            data = orjson.dumps(event.to_json(), option=orjson.OPT_SERIALIZE_NUMPY)
            ident = (event.id or "").replace("\n", "").encode()
            yield b"id: %s\nevent: change\ndata: %s\n\n" % (ident, data)
            if sub.overflowed and sub.queue.empty():
                break
        yield b'event: error\ndata: {"error": "overflow", "message": "client fell behind"}\n\n'
    finally:
        hub.unsubscribe(sub)


@router.get("/events", tags=["events"], summary="Server-sent events: the store's changes from now on",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def events(
    p: Reader,
    request: Request,
    kinds: Annotated[str | None, Query(description="comma-separated event kinds")] = None,
    experiment_id: str | None = None,
    run_id: str | None = None,
    ping: Annotated[float | None, Query(ge=0.05, le=300, allow_inf_nan=False)] = None,
    after: Annotated[str | None, Query(max_length=64, description="resume after this event id")] = None,
    last_event_id: Annotated[str | None, Header(max_length=64, description="resume after this event id")
                             ] = None,
) -> Response:
    state = state_of(request)
    wanted = {k.strip() for k in kinds.split(",") if k.strip()} if kinds else None
    interval = state.config.sse_ping if ping is None else ping
    loop = asyncio.get_running_loop()
    resume = after if after is not None else last_event_id
    if resume is not None and not (resume.isascii() and resume.isprintable() and resume.strip()):
        raise InvalidArgumentError(f"event id {resume[:64]!r} is not an event id of this server")
    sub = await run_in_threadpool(state.hub.subscribe, loop, resume)
    return StreamingResponse(_stream(state.hub, sub, interval, wanted, experiment_id, run_id),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
