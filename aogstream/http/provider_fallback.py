"""Provider fallback: the one loop every door uses to try a request's routes in turn.

`Gateway.routes` orders the providers that may serve a request (model, hybrid policy,
running first); this tries them in that order. A provider that fails before it has
answered anything (down, crashed, timed out, a 5xx: `may_fall_back`) hands the request
to the next; a mistake in the request (a 4xx) would fail everywhere, so it is answered
at once, as is the last provider's failure. Once a byte has gone to the client nothing
can be retried, so an attempt reports only the errors that came before its first byte.

AOG's services route and every flavor front door call this, each with its own attempt
(how to invoke and answer) and its own error shape. A client that hangs up cancels the
provider call: raw ASGI has no one else to notice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from aogstream.asgi_types import Receive
from aogstream.errors import GatewayError
from aogstream.gateway import Route, may_fall_back
from aogstream.http.asgi import CLIENT_WATCH, watch_disconnect

log = logging.getLogger(__name__)

type Attempt = Callable[[Route], Awaitable[GatewayError | None]]
"""Serve the request with one route: None once answered, else the error that came
before the first byte. A GatewayError it raises is answered with no fallback (the
request cannot be converted, or the answer cannot: another provider would not help)."""

type AnswerError = Callable[[GatewayError], Awaitable[None]]
"""Send the error as the door's complete answer (status and body in its flavor)."""


async def serve_with_fallback(routes: Sequence[Route], attempt: Attempt,
                              answer_error: AnswerError, receive: Receive) -> None:
    """Try `routes` in order until one answers; answer the error that ends the tries.

    The client hanging up cancels the tries: the serving loop says so through the
    request's `ClientWatch` (no task per request), else a task waits on `receive()`."""
    watch = CLIENT_WATCH.get()
    if watch is None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disconnect, receive, nursery.cancel_scope)
            await _try_routes(routes, attempt, answer_error)
            nursery.cancel_scope.cancel()
        return
    with trio.CancelScope() as scope, watch.cancelling(scope):
        await _try_routes(routes, attempt, answer_error)
    if scope.cancelled_caught:
        # the `http.disconnect` waits in the request's queue: read it, as the watching
        # task did, so that every layer watching `receive()` (the request log) sees it
        with trio.move_on_after(1.0):
            await receive()


async def _try_routes(routes: Sequence[Route], attempt: Attempt,
                      answer_error: AnswerError) -> None:
    for i, route in enumerate(routes):
        may_retry = i < len(routes) - 1
        try:
            early = await attempt(route)
        except GatewayError as err:
            early, may_retry = err, False
        if early is None:
            return
        if may_retry and may_fall_back(early):
            log.warning("%s failed before answering (%s); trying %s",
                        route.provider_name, early.message, routes[i + 1].provider_name)
            continue
        await answer_error(early)
        return
