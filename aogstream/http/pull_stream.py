"""One streamed answer for a model pull, shared by the two doors that stream one:
`POST /aog/v0.2/model/stream` (SSE) and Ollama's `POST /api/pull` (NDJSON).

Both watch the pull job, stop watching when the stream ends however it ends (a client
that hangs up is a watcher gone, which cancels a pull nobody else asked for), and
answer uncached and without Quart's response timeout (a big model takes longer than
its 60 s). Only the wire format of an event differs: the caller's encoder gives it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from quart import Response

from aogstream.management.model_pulls import PullJob

# Event to bytes on the wire; None leaves the event out of this door's stream.
EventEncoder = Callable[[dict[str, Any]], bytes | None]


def pull_stream_response(job: PullJob, encode: EventEncoder, mimetype: str,
                         head: bytes = b"") -> Response:
    """The job's events, each through `encode`, after `head`, as a streamed Response.

    The job is watched here, before the caller's next await, so a pull that ends quickly
    cannot end unseen."""
    events = job.watch()

    async def body() -> AsyncIterator[bytes]:
        try:
            if head:
                yield head
            async for event in events:
                data = encode(event)
                if data is not None:
                    yield data
        finally:
            job.unwatch(events)

    resp = Response(body(), mimetype=mimetype)
    resp.headers["Cache-Control"] = "no-cache"
    resp.timeout = None
    return resp
