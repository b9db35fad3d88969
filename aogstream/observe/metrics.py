"""Prometheus metrics of every serving process, summed at `/metrics`.

prometheus_client's multi-process mode: each process (the primary and every worker)
writes its samples to memory-mapped files in the run's directory
(`PROMETHEUS_MULTIPROC_DIR`, set by `observe.run` before this module is imported), and
the primary's `/metrics` adds them up (`exposition`). Counters and histograms of a
worker that died stay counted; its gauges go with it (`process_gone`).

Cheap on the hot path (ARCHITECTURE.md: counters and histograms, nothing more): a
request costs one update per metric at its end, with the labelled children cached
here; a stream's inter-chunk gaps are counted into a local list per stream and added
to the histogram once, when the stream ends (`StreamGaps`), so a chunk costs a
`bisect` and a list increment; a WebSocket session's frames likewise (`SessionFrames`),
added about once a second and at its end.

What the primary alone knows (plugin state and restarts, plugins' LLM calls and
trust denials) is read when `/metrics` is scraped (`LiveCollector`), not counted.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aogstream.invocation import PluginState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
               2.5, 5.0)
PLUGIN_STATES = tuple(s.value for s in PluginState)


class StreamGaps:
    """The inter-chunk gaps of one stream, bucketed locally (see the module docstring)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = GAP_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def add(self, gap: float) -> None:
        self.counts[bisect_left(self.bounds, gap)] += 1
        self.total += gap

    def clear(self) -> None:
        counts = self.counts
        for i in range(len(counts)):
            counts[i] = 0
        self.total = 0.0


class SessionFrames:
    """A WebSocket session's frames and reply times since they were last added to the
    metrics, counted locally: a realtime session moves a frame each way every 20 ms,
    and three multi-process metric updates per frame (two counters and a histogram,
    each a pid check, a lock and a memory-mapped write) cost more than the rest of
    the gateway's own work on it. `Metrics.add_frames` adds them in one go, which the
    session does about once a second and when it ends, so a scrape lags a live
    session by at most that."""

    __slots__ = ("frames_in", "frames_out", "replies")

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.replies = StreamGaps(LATENCY_BUCKETS)


class Metrics:
    """This process's metrics (one instance per process, made by `observe.run`)."""

    def __init__(self) -> None:
        reg = None  # multi-process mode: samples live in files, not in a registry
        self.requests = Counter(
            "aogstream_requests", "Requests and WebSocket sessions answered, by route, "
            "service and HTTP status", ["route", "service", "status"], registry=reg)
        self.ttfb = Histogram(
            "aogstream_request_ttfb_seconds", "Time from the request to the first byte of "
            "the answer (a stream's first chunk)", ["route", "service"],
            buckets=LATENCY_BUCKETS, registry=reg)
        self.duration = Histogram(
            "aogstream_request_duration_seconds", "Time from the request to the end of the "
            "answer (a WebSocket session's whole life)", ["route", "service"],
            buckets=LATENCY_BUCKETS, registry=reg)
        self.gaps = Histogram(
            "aogstream_stream_chunk_gap_seconds", "Time between two chunks sent on a "
            "stream (SSE, NDJSON)", ["service"], buckets=GAP_BUCKETS, registry=reg)
        self.bytes_out = Counter(
            "aogstream_response_bytes", "Bytes of answers sent to clients", ["service"],
            registry=reg)
        self.cancelled = Counter(
            "aogstream_requests_cancelled", "Requests whose client went away before the "
            "answer ended", ["route", "service"], registry=reg)
        self.active_streams = Gauge(
            "aogstream_active_streams", "Streamed answers (SSE, NDJSON) in progress",
            registry=reg, multiprocess_mode="livesum")
        self.active_sessions = Gauge(
            "aogstream_active_websocket_sessions", "WebSocket sessions open",
            registry=reg, multiprocess_mode="livesum")
        self.frames = Counter(
            "aogstream_websocket_frames", "WebSocket frames of service sessions (realtime "
            "speech, relays)", ["service", "direction"], registry=reg)
        self.replies = Histogram(
            "aogstream_websocket_reply_seconds", "Time from the oldest client frame not yet "
            "answered to the session's next frame back (realtime speech: how old the "
            "audio is when its partial result goes out)",
            ["service"], buckets=LATENCY_BUCKETS, registry=reg)
        self.plugin_calls = Counter(
            "aogstream_plugin_calls", "Provider calls, by plugin and service",
            ["plugin", "service"], registry=reg)
        self.plugin_errors = Counter(
            "aogstream_plugin_errors", "Provider calls that ended in an error",
            ["plugin", "service"], registry=reg)
        self.pulls = Counter(
            "aogstream_model_pulls", "Model pulls that ended, by plugin and outcome",
            ["plugin", "outcome"], registry=reg)
        self.pulls_running = Gauge(
            "aogstream_model_pulls_running", "Model pulls in progress", registry=reg,
            multiprocess_mode="livesum")
        self._children: dict[tuple[Any, ...], Any] = {}
        # (route, service, status) → the children every request updates (one look-up)
        self._per_request: dict[tuple[str, str, int], _RequestChildren] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # ---- per request ---------------------------------------------------------------

    def new_gaps(self) -> StreamGaps:
        """The gap counts of a stream that begins."""
        return StreamGaps()

    def request_done(self, route: str, service: str, status: int, ttfb: float | None,
                     duration: float, bytes_out: int, cancelled: bool,
                     gaps: StreamGaps | None) -> None:
        """One request or WebSocket session ended."""
        key = (route, service, status)
        kids = self._per_request.get(key)
        if kids is None:
            kids = self._per_request[key] = _RequestChildren(
                self._child(self.requests, route, service, str(status)),
                self._child(self.ttfb, route, service),
                self._child(self.duration, route, service),
                self._child(self.bytes_out, service))
        kids.done(ttfb, duration, bytes_out)
        if cancelled:
            self._child(self.cancelled, route, service).inc()
        if gaps is not None and gaps.total >= 0 and any(gaps.counts):
            add_observations(self._child(self.gaps, service), gaps)

    def stream_open(self, delta: int) -> None:
        self.active_streams.inc(delta)

    def session_open(self, delta: int) -> None:
        self.active_sessions.inc(delta)

    def frame(self, service: str, direction: str) -> None:
        self._child(self.frames, service, direction).inc()

    def reply(self, service: str, seconds: float) -> None:
        self._child(self.replies, service).observe(seconds)

    def new_session_frames(self) -> SessionFrames:
        """The local frame counts of a WebSocket session that begins."""
        return SessionFrames()

    def add_frames(self, service: str, counts: SessionFrames) -> None:
        """Add a session's frames counted since the last call, and reset them."""
        if counts.frames_in:
            self._child(self.frames, service, "in").inc(counts.frames_in)
            counts.frames_in = 0
        if counts.frames_out:
            self._child(self.frames, service, "out").inc(counts.frames_out)
            counts.frames_out = 0
        replies = counts.replies
        if any(replies.counts):
            add_observations(self._child(self.replies, service), replies)
            replies.clear()

    # ---- the hooks of `observe.record` ---------------------------------------------

    def provider_call(self, plugin: str, service: str, failed: bool) -> None:
        self._child(self.plugin_calls, plugin, service).inc()
        if failed:
            self._child(self.plugin_errors, plugin, service).inc()

    def model_pull(self, plugin: str, outcome: str) -> None:
        self._child(self.pulls, plugin, outcome).inc()

    def model_pull_running(self, delta: int) -> None:
        self.pulls_running.inc(delta)


class _RequestChildren:
    """The children one (route, service, status) updates at each request's end, with
    their value cells taken out once: a request then costs one dictionary look-up and
    one cell update per sample (count, bucket, sum), not the public methods' label and
    observability checks and linear bucket search each time. prometheus_client (pinned)
    keeps a counter child's cell in `_value` and a histogram child's in `_buckets`,
    `_sum` and `_upper_bounds`; where they are missing, the public methods are used."""

    __slots__ = ("bytes_out", "duration", "requests", "ttfb")

    def __init__(self, requests: Any, ttfb: Any, duration: Any, bytes_out: Any) -> None:
        self.requests = _cell(requests)
        self.ttfb = _histogram_cells(ttfb)
        self.duration = _histogram_cells(duration)
        self.bytes_out = _cell(bytes_out)

    def done(self, ttfb: float | None, duration: float, bytes_out: int) -> None:
        self.requests(1)
        if ttfb is not None:
            self.ttfb(ttfb)
        self.duration(duration)
        if bytes_out:
            self.bytes_out(bytes_out)


def _cell(counter: Any) -> Any:
    """`amount` → add it to this counter child (its value cell when it has one)."""
    value = getattr(counter, "_value", None)
    return value.inc if value is not None and hasattr(value, "inc") else counter.inc


def _histogram_cells(child: Any) -> Any:
    """`value` → observe it on this histogram child, as `Histogram.observe` does (the
    first bucket whose bound is ≥ the value, and the sum) on its cells directly."""
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    bounds = getattr(child, "_upper_bounds", None)
    if buckets is None or total is None or bounds is None or len(buckets) != len(bounds) \
            or not bounds or bounds[-1] != float("inf"):
        return child.observe
    bounds = tuple(bounds)
    incs = tuple(b.inc for b in buckets)
    add = total.inc

    def observe(value: float) -> None:
        add(value)
        incs[bisect_left(bounds, value)](1)

    return observe


def add_observations(child: Any, gaps: StreamGaps) -> None:
    """Add a stream's bucketed gaps to a histogram child in one go: one update per
    bucket used, not per chunk. prometheus_client (pinned) keeps a child's bucket and
    sum values in `_buckets` and `_sum`; without them, observe each gap at its
    bucket's bound (same buckets and count, the sum from the exact total)."""
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if buckets is not None and total is not None and len(buckets) == len(gaps.counts):
        for i, n in enumerate(gaps.counts):
            if n:
                buckets[i].inc(n)
        total.inc(gaps.total)
        return
    bounds = (*gaps.bounds, gaps.bounds[-1] * 2)
    for i, n in enumerate(gaps.counts):
        for _ in range(n):
            child.observe(bounds[i])


class LiveCollector(Collector):
    """The primary's live facts, read at each scrape: plugins' state and restarts,
    and their LLM calls and trust denials (`host.llm_service` counts them)."""

    def __init__(self, plugins: Iterable[tuple[str, str, int | None]],
                 llm_counters: dict[str, dict[str, Any]] | None = None) -> None:
        """`plugins`: (name, state, restarts or None) of every plugin; `llm_counters`:
        plugin id → its `host.llm_service.Counters` as a dict. Both copied at the
        scrape, on the thread that changes them."""
        self.plugins = list(plugins)
        self.llm_counters = llm_counters

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("aogstream_plugin_state", "1 for the state each plugin "
                                  "is in", labels=["plugin", "state"])
        restarts = CounterMetricFamily("aogstream_plugin_restarts", "Times the gateway "
                                       "restarted a plugin process", labels=["plugin"])
        up = GaugeMetricFamily("aogstream_plugin_up", "1 when the plugin serves",
                               labels=["plugin"])
        for name, now, restarted in self.plugins:
            for s in sorted({*PLUGIN_STATES, now} - {""}):
                state.add_metric([name, s], 1.0 if s == now else 0.0)
            up.add_metric([name], 1.0 if now == PluginState.RUNNING else 0.0)
            if restarted is not None:
                restarts.add_metric([name], float(restarted))
        yield state
        yield up
        yield restarts
        if self.llm_counters is None:
            return
        calls = CounterMetricFamily("aogstream_plugin_llm_calls", "Plugins' calls of the "
                                    "gateway's models (ctx.llm), by outcome",
                                    labels=["plugin", "outcome"])
        denials = CounterMetricFamily("aogstream_plugin_llm_trust_denials", "Plugins' LLM "
                                      "calls the trust gate refused", labels=["plugin"])
        tokens = CounterMetricFamily("aogstream_plugin_llm_tokens", "Tokens of plugins' "
                                     "LLM calls", labels=["plugin", "direction"])
        for plugin, values in sorted(self.llm_counters.items()):
            for outcome in ("succeeded", "failed", "denied"):
                calls.add_metric([plugin, outcome], float(values.get(outcome, 0)))
            denials.add_metric([plugin], float(values.get("denied", 0)))
            tokens.add_metric([plugin, "input"], float(values.get("input_tokens", 0)))
            tokens.add_metric([plugin, "output"], float(values.get("output_tokens", 0)))
        yield calls
        yield denials
        yield tokens


def exposition(folder: str, live: Collector | None) -> bytes:
    """Every process's samples (from `folder`) and the live facts, in Prometheus text."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)
    if live is not None:
        registry.register(live)
    return generate_latest(registry)


def process_gone(folder: str, pid: int) -> None:
    """A worker process ended: drop its live gauges (its counters stay counted)."""
    multiprocess.mark_process_dead(pid, folder)
