"""One request's record, and the hooks the core calls to fill it in.

The serving middleware (`observe.middleware`) opens a `RequestRecord` per request and
puts it in a context variable; trio copies the context into every task a request
starts, so the gateway core can say which service, model, provider and plugin served
the request (`noted`, `served`) without any route passing the record along, and
WebSocket sessions, fallbacks and front doors are covered by the same two calls.
Outside a request (a plugin's own LLM call, a unit test) the variable is unset and the
hooks only count the provider call.

`sink` is the metrics of this process (`observe.metrics.Metrics`), or None when metrics
are off or the process does not serve (the CLI, unit tests): every hook is then a
context-variable read and nothing more.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol


class MetricsSink(Protocol):
    """What the hooks tell the metrics (see `observe.metrics.Metrics`)."""

    def provider_call(self, plugin: str, service: str, failed: bool) -> None: ...

    def model_pull(self, plugin: str, outcome: str) -> None: ...

    def model_pull_running(self, delta: int) -> None: ...


class RequestRecord:
    """What one request or WebSocket session did (never its body or credentials)."""

    __slots__ = ("bytes_in", "bytes_out", "cancelled", "chunks", "close_code", "done",
                 "duration", "frames_in", "frames_out", "id", "kind", "method", "model",
                 "path", "plugin", "provider", "service", "started", "status", "stream",
                 "ttfb", "wall")

    def __init__(self, rid: str, kind: str, method: str, path: str, started: float,
                 wall: float) -> None:
        self.id = rid  # also the answer's `x-aogstream-request` header
        self.kind = kind
        self.method = method
        self.path = path
        self.started = started  # perf_counter()
        self.wall = wall  # time.time() at the start
        self.service = ""
        self.model = ""
        self.provider = ""
        self.plugin = ""
        self.status = 0
        self.ttfb: float | None = None
        self.duration = 0.0
        self.bytes_in = 0
        self.bytes_out = 0
        self.chunks = 0
        self.stream = False
        self.cancelled = False
        self.frames_in = 0
        self.frames_out = 0
        self.close_code: int | None = None
        self.done = False  # the last byte of the answer was handed to the server


CURRENT: contextvars.ContextVar[RequestRecord] = contextvars.ContextVar("aogstream_request")
sink: MetricsSink | None = None


def noted(service: str, body: dict[str, Any] | None) -> None:
    """Routing looked at a request for `service` (a service that exists) with `body`."""
    rec = CURRENT.get(None)
    if rec is not None:
        rec.service = service
        model = body.get("model") if body else None
        if isinstance(model, str):
            rec.model = model[:200]


def served(route: Any) -> None:
    """A provider call on `route` (a `gateway.Route`) begins: the last one of a request
    (after fallbacks) is the one that served it."""
    rec = CURRENT.get(None)
    if rec is not None:
        rec.service = route.service
        rec.provider = route.provider_name
        rec.plugin = route.provider.name


def call_ended(route: Any, error: object) -> None:
    """A provider call on `route` ended; `error` is the invocation's error or None."""
    if sink is not None:
        sink.provider_call(route.provider.name, route.service, error is not None)


def model_pull_started() -> None:
    if sink is not None:
        sink.model_pull_running(1)


def model_pull_ended(plugin: str, outcome: str) -> None:
    if sink is not None:
        sink.model_pull_running(-1)
        sink.model_pull(plugin, outcome)
