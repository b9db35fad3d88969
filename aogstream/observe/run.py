"""A serving run's observability: its settings, its directory, each process's Observer.

The primary makes one directory per run (`start_run`, removed by `end_run`) and names
it in the environment its workers inherit; in it every serving process keeps its
metrics files (prometheus_client's multi-process mode) and its ring of recent
requests, and the primary writes the route table the workers label requests with.
An operator who sets `PROMETHEUS_MULTIPROC_DIR` gets that directory instead, emptied
of an earlier run's files at the start and left in place at the end. A primary killed
before it could remove its folder leaves it behind; the next start removes it.

Settings (environment variables of `aogstream server start`):

- `AOGSTREAM_METRICS`: `on` (default) or `off` (no metric is counted; `/metrics`
  answers 404 saying so);
- `AOGSTREAM_REQUEST_LOG`: `text` (default: one `key=value` line per request at INFO
  on the `aogstream.requests` logger), `json` (one JSON object per line on stderr,
  nothing else on the line) or `off`;
- `AOGSTREAM_REQUEST_HISTORY`: how many recent requests each serving process keeps
  for `GET /aogstream/v1/requests` (default 200; 0 keeps none).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from aogstream.observe import record
from aogstream.observe.record import RequestRecord
from aogstream.observe.ring import RING_PREFIX, RING_SUFFIX, RingWriter, read_all, ring_path

log = logging.getLogger("aogstream.observe")
request_log = logging.getLogger("aogstream.requests")

METRICS_ENV = "AOGSTREAM_METRICS"
REQUEST_LOG_ENV = "AOGSTREAM_REQUEST_LOG"
HISTORY_ENV = "AOGSTREAM_REQUEST_HISTORY"
RUN_DIR_ENV = "AOGSTREAM_RUN_DIR"  # set by the primary for its workers
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTES_FILE = "routes.json"
RUN_PREFIX = "aogstream-run-"
OWNER_FILE = "primary.pid"  # which process made the folder (see `remove_abandoned_runs`)
DEFAULT_HISTORY = 200
MAX_HISTORY = 10_000
REQUESTS_PATH = "/aogstream/v1/requests"
METRICS_PATH = "/metrics"
# their own polling would push every real request out of the ring and the log
UNRECORDED = frozenset({REQUESTS_PATH, METRICS_PATH})
_PLAIN = re.compile(r"^[\w.:/@+,{}-]*$")


class SettingsError(ValueError):
    """An observability setting has a value it cannot have (said which, and what to use)."""


@attrs.frozen
class Settings:
    metrics: bool = True
    request_log: str = "text"  # text | json | off
    history: int = DEFAULT_HISTORY

    @classmethod
    def from_env(cls) -> Settings:
        metrics = os.environ.get(METRICS_ENV, "on").strip().lower()
        if metrics not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
            raise SettingsError(f"{METRICS_ENV}={metrics!r}: use on or off")
        mode = os.environ.get(REQUEST_LOG_ENV, "text").strip().lower() or "text"
        if mode not in ("text", "json", "off"):
            raise SettingsError(f"{REQUEST_LOG_ENV}={mode!r}: use text, json or off")
        raw = os.environ.get(HISTORY_ENV, str(DEFAULT_HISTORY)).strip()
        if not raw.isdigit() or int(raw) > MAX_HISTORY:
            raise SettingsError(f"{HISTORY_ENV}={raw!r}: use a whole number from 0 to "
                                f"{MAX_HISTORY}")
        return cls(metrics in ("on", "1", "true", "yes"), mode, int(raw))


@attrs.define
class RunDir:
    path: Path
    owned: bool  # made for this run (removed at its end), not the operator's


def start_run() -> RunDir:
    """The primary, before anything imports prometheus_client: this run's directory,
    named in the environment the workers inherit."""
    given = os.environ.get(PROMETHEUS_ENV, "").strip()
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():  # an earlier run's counters would add up with ours
            if old.suffix == ".db" or (old.name.startswith(RING_PREFIX)
                                       and old.name.endswith(RING_SUFFIX)) \
                    or old.name == ROUTES_FILE:
                old.unlink(missing_ok=True)
        run = RunDir(folder, owned=False)
    else:
        remove_abandoned_runs(Path(tempfile.gettempdir()))
        run = RunDir(Path(tempfile.mkdtemp(prefix=RUN_PREFIX)), owned=True)
        (run.path / OWNER_FILE).write_text(f"{os.getpid()}\n")
    os.environ[RUN_DIR_ENV] = str(run.path)
    os.environ[PROMETHEUS_ENV] = str(run.path)
    return run


def remove_abandoned_runs(folder: Path) -> list[Path]:
    """Remove the run folders in `folder` whose primary is dead (killed before it could
    remove its own); a folder without an owner file, or whose owner lives, is kept."""
    removed = []
    for run in folder.glob(RUN_PREFIX + "*"):
        try:
            pid = int((run / OWNER_FILE).read_text().strip())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run)
        except (OSError, ValueError):
            continue  # no owner file, or not ours to judge
    return removed


def end_run(run: RunDir) -> None:
    """The primary is stopping: close this process's files, remove the run's folder."""
    global _process
    if _process is not None:
        _process.close()
        _process = None
    if run.owned:
        shutil.rmtree(run.path, ignore_errors=True)


class RouteTable:
    """A request path → its route's template (`/v1/models/{model}`), or `other`: the
    `route` label of the metrics, bounded whatever paths clients send. Templates
    write a parameter that spans slashes as `{name:path}`."""

    MAX_CACHE = 4096

    def __init__(self, templates: list[str]) -> None:
        self.exact: set[str] = set()
        self.patterns: list[tuple[re.Pattern[str], str]] = []
        for t in templates:
            if "{" not in t:
                self.exact.add(t)
                continue
            shown = re.sub(r"\{(\w+):path\}", r"{\1}", t)
            rx = re.escape(t)
            rx = re.sub(r"\\\{\w+:path\\\}", ".+", rx)
            rx = re.sub(r"\\\{\w+\\\}", "[^/]+", rx)
            self.patterns.append((re.compile(f"^{rx}/?$"), shown))
        # specific before general: more literal characters first
        self.patterns.sort(key=lambda p: -len(re.sub(r"\{\w+\}", "", p[1])))
        self._cache: dict[str, str] = {}

    def label(self, path: str) -> str:
        hit = self._cache.get(path)
        if hit is not None:
            return hit
        bare = path.rstrip("/") or "/"
        found = bare if bare in self.exact else next(
            (t for rx, t in self.patterns if rx.match(path)), "other")
        if len(self._cache) >= self.MAX_CACHE:
            self._cache.clear()
        self._cache[path] = found
        return found


def _field(value: str) -> str:
    """A value as the text log shows it: plain, or JSON-quoted when it holds spaces,
    quotes or control characters (client-chosen names cannot forge a field or line).
    The same few names (route, service, model, provider) come back on every request,
    so their shown form is remembered (a bounded cache)."""
    shown = _SHOWN.get(value)
    if shown is None:
        shown = value if _PLAIN.match(value) else json.dumps(value)
        if len(_SHOWN) >= _SHOWN_MAX:
            _SHOWN.clear()
        _SHOWN[value] = shown
    return shown


_SHOWN: dict[str, str] = {}
_SHOWN_MAX = 4096


def _quoted(value: str) -> str:
    """A string as a JSON string (as the compact encoder writes it: not ASCII-escaped),
    remembered as `_field` remembers its shown forms."""
    quoted = _QUOTED.get(value)
    if quoted is None:
        quoted = _encode_string(value)
        if len(_QUOTED) >= _SHOWN_MAX:
            _QUOTED.clear()
        _QUOTED[value] = quoted
    return quoted


_QUOTED: dict[str, str] = {}
_encode_string: Any = getattr(json.encoder, "c_encode_basestring", None) or \
    json.encoder.py_encode_basestring
# one encoder for every record (json.dumps with options builds a new one per call)
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class _RecordTemplate:
    """The request log's `LogRecord`s, made as `Logger.makeRecord` makes them but
    without its per-record look-ups (thread, process and task names, source path):
    those are the same for every line the serving loop's thread writes, so they are
    taken once from a record made the usual way, and each line copies them and sets
    its own time and message. A line written from another thread, or while another
    record factory is set, gets a record made the usual way."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.thread = threading.get_ident()
        base = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "", (), None)
        self.fields = dict(base.__dict__)
        # logging's start (ns) that `relativeCreated` counts from; private, hence getattr
        self.start_ns: int = getattr(logging, "_startTime", 0)

    def make(self, line: str) -> logging.LogRecord:
        if threading.get_ident() != self.thread or \
                logging.getLogRecordFactory() is not logging.LogRecord:
            return self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, line,
                                          (), None)
        rec = logging.LogRecord.__new__(logging.LogRecord)
        d = rec.__dict__
        d.update(self.fields)
        ns = time.time_ns()
        d["msg"] = line
        d["created"] = ns / 1e9
        # as LogRecord.__init__: whole milliseconds of the second, and since start
        d["msecs"] = (ns % 1_000_000_000) // 1_000_000 + 0.0
        if d["msecs"] == 999.0 and int(d["created"]) != ns // 1_000_000_000:
            d["msecs"] = 0.0  # the float seconds rounded up
        d["relativeCreated"] = (ns - self.start_ns) / 1e6
        return rec


class Observer:
    """One serving process's request log, ring of recent requests and metrics."""

    def __init__(self, folder: Path, settings: Settings, role: str) -> None:
        self.folder = folder
        self.settings = settings
        self.role = role
        self.pid = os.getpid()
        self._count = 0
        self.metrics: Any = None
        if settings.metrics:
            os.environ.setdefault(PROMETHEUS_ENV, str(folder))
            from aogstream.observe.metrics import Metrics  # reads PROMETHEUS_ENV

            self.metrics = Metrics()
        record.sink = self.metrics
        self.ring = RingWriter(ring_path(folder, self.pid), settings.history) \
            if settings.history else None
        self.routes = RouteTable(self._saved_routes())
        # the primary's live facts: () → plugins' (name, state, restarts), and
        # () → plugins' LLM counters (see `metrics.LiveCollector`)
        self._live: tuple[Any, Any] | None = None
        self._template: _RecordTemplate | None = None  # the request log's records
        if settings.request_log == "json":
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            request_log.addHandler(handler)
            request_log.propagate = False
            request_log.setLevel(logging.INFO)

    def _saved_routes(self) -> list[str]:
        try:
            routes = json.loads((self.folder / ROUTES_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [r for r in routes if isinstance(r, str)] if isinstance(routes, list) else []

    def set_routes(self, templates: list[str]) -> None:
        """The primary's route table, for itself and (through the run's folder) its
        workers, which start after it is written."""
        self.routes = RouteTable(templates)
        tmp = self.folder / (ROUTES_FILE + ".tmp")
        tmp.write_text(json.dumps(sorted(set(templates))))
        tmp.replace(self.folder / ROUTES_FILE)

    def next_id(self) -> str:
        """A new request's id: unique in this run (process id, then a count)."""
        self._count += 1
        return f"{self.pid:x}-{self._count}"

    # ---- one request ended ---------------------------------------------------------

    def finish(self, rec: RequestRecord, gaps: Any) -> None:
        status = rec.status or (499 if rec.cancelled else 0)  # 499: client went away
        route = self.routes.label(rec.path)
        if self.metrics is not None:
            self.metrics.request_done(route, rec.service, status, rec.ttfb, rec.duration,
                                      rec.bytes_out, rec.cancelled, gaps)
        if rec.path in UNRECORDED and status == 200:
            return
        mode = self.settings.request_log
        if self.ring is None and (mode == "off" or not request_log.isEnabledFor(logging.INFO)):
            return
        # the ring's record and the log's line are formatted straight from the record
        # (`json_line`, `text_of`): the same text `fields()` would give through the
        # JSON encoder or `text_line`, without the dictionary in between
        encoded = None
        if self.ring is not None or mode == "json":
            encoded = self.json_line(rec, route, status)
            if self.ring is not None:
                self.ring.append_encoded(encoded.encode(),
                                         lambda: self.fields(rec, route, status))
        if mode != "off" and request_log.isEnabledFor(logging.INFO):
            line = encoded if encoded is not None and mode == "json" \
                else self.text_of(rec, route, status)
            # a record made directly: `info()` would look up the caller's frame too
            if self._template is None:
                self._template = _RecordTemplate(request_log)
            request_log.handle(self._template.make(line))

    def fields(self, rec: RequestRecord, route: str, status: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": rec.id, "ts": round(rec.wall, 3),
            "process": self.role, "kind": rec.kind, "method": rec.method,
            "route": route, "path": rec.path[:200], "service": rec.service,
            "model": rec.model, "provider": rec.provider, "plugin": rec.plugin,
            "status": status,
            "ttfb_ms": None if rec.ttfb is None else round(rec.ttfb * 1000, 2),
            "duration_ms": round(rec.duration * 1000, 2),
            "bytes_in": rec.bytes_in, "bytes_out": rec.bytes_out,
            "chunks": rec.chunks, "stream": rec.stream, "cancelled": rec.cancelled,
        }
        if rec.kind == "websocket":
            out.update(frames_in=rec.frames_in, frames_out=rec.frames_out,
                       close_code=rec.close_code)
        return out

    def json_line(self, rec: RequestRecord, route: str, status: int) -> str:
        """`fields()` as compact JSON (what `_COMPACT.encode` makes of it), built
        directly: names are quoted once and remembered (`_quoted`)."""
        ttfb = "null" if rec.ttfb is None else repr(round(rec.ttfb * 1000, 2))
        line = (f'{{"id":{_quoted(rec.id)},"ts":{round(rec.wall, 3)!r},'
                f'"process":{_quoted(self.role)},"kind":{_quoted(rec.kind)},'
                f'"method":{_quoted(rec.method)},"route":{_quoted(route)},'
                f'"path":{_quoted(rec.path[:200])},"service":{_quoted(rec.service)},'
                f'"model":{_quoted(rec.model)},"provider":{_quoted(rec.provider)},'
                f'"plugin":{_quoted(rec.plugin)},"status":{int(status)},'
                f'"ttfb_ms":{ttfb},"duration_ms":{round(rec.duration * 1000, 2)!r},'
                f'"bytes_in":{int(rec.bytes_in)},"bytes_out":{int(rec.bytes_out)},'
                f'"chunks":{int(rec.chunks)},"stream":{"true" if rec.stream else "false"},'
                f'"cancelled":{"true" if rec.cancelled else "false"}')
        if rec.kind == "websocket":
            code = "null" if rec.close_code is None else int(rec.close_code)
            line += (f',"frames_in":{int(rec.frames_in)},"frames_out":{int(rec.frames_out)},'
                     f'"close_code":{code}')
        return line + "}"

    def text_of(self, rec: RequestRecord, route: str, status: int) -> str:
        """`text_line(fields(...))`, built directly from the record."""
        ttfb = "-" if rec.ttfb is None else round(rec.ttfb * 1000, 2)
        line = (f"request {rec.method} {_field(rec.path[:200])} id={rec.id} "
                f"process={self.role} kind={rec.kind} route={_field(route)} "
                f"service={_field(rec.service)} model={_field(rec.model)} "
                f"provider={_field(rec.provider)} plugin={_field(rec.plugin)} "
                f"status={status} ttfb_ms={ttfb} duration_ms={round(rec.duration * 1000, 2)} "
                f"bytes_in={rec.bytes_in} bytes_out={rec.bytes_out} chunks={rec.chunks} "
                f"stream={'true' if rec.stream else 'false'} "
                f"cancelled={'true' if rec.cancelled else 'false'}")
        if rec.kind == "websocket":
            line += (f" frames_in={rec.frames_in} frames_out={rec.frames_out} "
                     f"close_code={rec.close_code if rec.close_code is not None else '-'}")
        return line

    @staticmethod
    def text_line(f: dict[str, Any]) -> str:
        """The `key=value` line of `fields()` (names a client chose are quoted)."""
        ttfb = "-" if f["ttfb_ms"] is None else f["ttfb_ms"]
        line = (f"request {f['method']} {_field(f['path'])} id={f['id']} "
                f"process={f['process']} kind={f['kind']} route={_field(f['route'])} "
                f"service={_field(f['service'])} model={_field(f['model'])} "
                f"provider={_field(f['provider'])} plugin={_field(f['plugin'])} "
                f"status={f['status']} ttfb_ms={ttfb} duration_ms={f['duration_ms']} "
                f"bytes_in={f['bytes_in']} bytes_out={f['bytes_out']} chunks={f['chunks']} "
                f"stream={'true' if f['stream'] else 'false'} "
                f"cancelled={'true' if f['cancelled'] else 'false'}")
        if f["kind"] == "websocket":
            line += (f" frames_in={f['frames_in']} frames_out={f['frames_out']} "
                     f"close_code={f['close_code'] if f['close_code'] is not None else '-'}")
        return line

    def watch(self, plugins: Any, llm_counters: Any) -> None:
        """The primary: read these at each scrape (see `metrics.LiveCollector`)."""
        self._live = (plugins, llm_counters)

    def live_facts(self) -> Any:
        """The live facts now, copied on the event loop's thread (where they change),
        for `exposition` to format in a worker thread."""
        if self._live is None or self.metrics is None:
            return None
        from aogstream.observe.metrics import LiveCollector

        plugins, llm = self._live
        counters = {name: c.as_dict() if hasattr(c, "as_dict") else dict(c)
                    for name, c in list(llm().items())}
        return LiveCollector(list(plugins()), counters)

    # ---- what the management routes read -------------------------------------------

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` requests of every serving process, newest first."""
        return read_all(self.folder, limit)

    def exposition(self, live: Any = None) -> bytes:
        """Every process's metrics and `live` (from `live_facts`), in Prometheus text."""
        from aogstream.observe.metrics import exposition

        return exposition(str(self.folder), live)

    def process_gone(self, pid: int) -> None:
        """A worker ended: drop its live gauges and its ring."""
        if self.metrics is not None:
            from aogstream.observe.metrics import process_gone

            process_gone(str(self.folder), pid)
        ring_path(self.folder, pid).unlink(missing_ok=True)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        record.sink = None


_process: Observer | None = None


def open_process(role: str, settings: Settings | None = None) -> Observer:
    """This serving process's Observer (`role`: "primary" or "w<N>" for worker N), in the run's
    folder the primary named (`start_run`)."""
    global _process
    folder = os.environ.get(RUN_DIR_ENV, "")
    if not folder:
        raise RuntimeError(f"{RUN_DIR_ENV} is not set: start_run() first")
    _process = Observer(Path(folder), settings or Settings.from_env(), role)
    return _process


def current() -> Observer | None:
    """This process's Observer, or None where nothing serves (the CLI, unit tests)."""
    return _process
