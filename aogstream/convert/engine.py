"""Apply flavor pipelines in AOG's directions: app flavor → AOG → provider flavor, and back.

Requests run the app flavor's `request_to_aog` then the provider's `request_from_aog`;
responses and stream chunks run the provider's `*_to_aog` then the app flavor's `*_from_aog`.
The `aog` flavor is the pivot, so its own blocks are skipped, and when both sides speak the
same flavor nothing is parsed at all: the very same bytes object goes through.

Jsonata steps whose exact text has a plain-Python twin (aogstream.convert.fast: the built-in
chat/generate/embed expressions) run the twin, and jsonata only when the twin declines the
body's shape; every other expression (plugin templates, edited built-ins) runs on jsonata.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aogstream.convert.flavor import FlavorRegistry, FlavorService, Pipeline, Step, TemplateError

PIVOT = "aog"
# Bodies with these content types are media, never JSON: AOG never converts them either.
_OPAQUE_PREFIXES = ("application/octet-stream", "audio/", "image/", "video/")


class ConvertError(Exception):
    """A body the pipeline could not convert; the message names the step that failed."""


@dataclass
class Converted:
    """A converted body with its (converted) headers."""

    body: bytes
    headers: dict[str, str]


def _opaque(headers: dict[str, str]) -> bool:
    """Media bodies pass through untouched whatever the templates say."""
    ctype = headers.get("Content-Type", "").lower()
    return ctype.startswith(_OPAQUE_PREFIXES)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, the form every chunk is sent in (one shared encoder: json.dumps
    with options would build a new one per chunk)."""
    return _ENCODER.encode(value).encode()


def encode_body(value: Any) -> bytes:
    """A converted value as the bytes a conversion gives (`request_parsed`'s callers)."""
    return _dumps(value)


def apply_headers(pipelines: tuple[Pipeline, ...], headers: dict[str, str]) -> dict[str, str]:
    """Run the header steps (clear_all, del, set, add in that order) on a copy of `headers`."""
    out = dict(headers)
    for pipe in pipelines:
        for step in pipe.header_steps:
            cfg = step.header or {}
            if cfg["clear_all"]:
                out.clear()
            for name in cfg["del"]:
                out.pop(name, None)
            out.update(cfg["set"])
            for name, value in cfg["add"].items():
                out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _matches(step: Step, text: str) -> bool:
    """Does an action_if step's pattern match this body?"""
    if step.trim:
        text = text.strip()
    if isinstance(step.pattern, str):
        return text == step.pattern
    return step.pattern is not None and step.pattern.search(text) is not None


def body_steps(pipelines: tuple[Pipeline, ...]) -> tuple[Step, ...]:
    """The body steps of consecutive pipelines as one flat tuple (computed once per stream)."""
    return tuple(step for pipe in pipelines for step in pipe.body_steps)


def _evaluate(step: Step, value: Any, bindings: dict[str, Any]) -> Any:
    """One jsonata step: the plain-Python twin when it has one, else (or if it balks) jsonata.

    A twin raises when the body has a shape it does not mirror exactly (and never mutates its
    input), so jsonata then gives the answer, or the error, it always gave.
    """
    if step.fast is not None:
        try:
            return step.fast(value, bindings)
        except Exception:  # noqa: BLE001 - any doubt means: let jsonata decide
            pass
    try:
        return step.expr.evaluate(value, bindings)  # type: ignore[union-attr]
    except Exception as exc:
        raise ConvertError(f"{step.where}: jsonata evaluation failed: {exc}") from exc


def run_steps(steps: tuple[Step, ...], body: bytes, bindings: dict[str, Any]) -> bytes | None:
    """Run body steps; None means the body was dropped (action_if, or empty result).

    The body is parsed lazily at the first jsonata step and serialized once at the end, so
    an action_if-only pipeline never touches JSON and a multi-step one parses only once.
    """
    value: Any = body
    parsed = False
    for step in steps:
        if step.converter == "action_if":
            if parsed:
                text = _dumps(value).decode()
            elif step.needle is not None and step.needle not in body:
                continue  # cannot match: skip decoding the chunk
            else:
                text = body.decode("utf-8", "replace")
            if _matches(step, text):
                return None
            continue
        if not parsed:
            try:
                value = json.loads(body)
            except ValueError as exc:
                raise ConvertError(f"{step.where}: body is not JSON: {exc}") from exc
            parsed = True
        value = _evaluate(step, value, bindings)
        if value is None:
            return None
    return _dumps(value) if parsed else body


def apply_body(pipelines: tuple[Pipeline, ...], body: bytes,
               bindings: dict[str, Any]) -> bytes | None:
    """Run the body steps of `pipelines`; None means the body was dropped."""
    return run_steps(body_steps(pipelines), body, bindings)


def new_id() -> str:
    """The `$id` of a response when the caller gives none (AOG uses random digits too)."""
    return str(secrets.randbits(63))


def _bindings(model: str | None, stream: bool | None, id_: str | None) -> dict[str, Any]:
    """Template variables; unset ones stay unbound so `$exists($x)` works in templates."""
    out: dict[str, Any] = {}
    if model is not None:
        out["model"] = model
    if stream is not None:
        out["stream"] = stream
    if id_ is not None:
        out["id"] = id_
    return out


class StreamConverter:
    """Converts one stream, chunk by chunk, as the chunks arrive.

    Header steps are body-independent, so they run once here; `headers` then carries the
    Content-Type that decides the output framing (SSE or NDJSON).  Prologue and epilogue come
    from the requesting (app) flavor, as in AOG.
    """

    def __init__(self, app: FlavorService, provider: FlavorService, headers: dict[str, str],
                 bindings: dict[str, Any]) -> None:
        """Pick the pipelines for this direction; same flavor means passthrough."""
        self.passthrough = app.flavor == provider.flavor
        pipes: list[Pipeline] = []
        if not self.passthrough:
            if provider.flavor != PIVOT:
                pipes.append(provider.pipeline("stream_response_to_aog"))
            if app.flavor != PIVOT:
                pipes.append(app.pipeline("stream_response_from_aog"))
        self._pipes = tuple(pipes)
        self._steps = body_steps(self._pipes)
        self._bindings = bindings
        self.headers = apply_headers(self._pipes, headers)
        last = app.pipeline("stream_response_from_aog")
        edge = not self.passthrough and app.flavor != PIVOT
        self.prologue = [p.encode() for p in last.prologue] if edge else []
        self.epilogue = [e.encode() for e in last.epilogue] if edge else []

    @property
    def content_type(self) -> str:
        """The output Content-Type the templates asked for ('' when none)."""
        return self.headers.get("Content-Type", "")

    def convert(self, chunk: bytes) -> bytes | None:
        """Convert one chunk (without SSE/NDJSON framing); None when it is dropped."""
        if self.passthrough:
            return chunk
        if not chunk.strip():
            return None
        return run_steps(self._steps, chunk, self._bindings)


class Conversion:
    """The pipelines between one app-side and one provider-side service, chosen once."""

    def __init__(self, app: FlavorService, provider: FlavorService) -> None:
        """Precompute the request and response pipeline tuples for this pair."""
        self.app = app
        self.provider = provider
        self.passthrough = app.flavor == provider.flavor

        def pair(first: str, second: str, first_side: FlavorService,
                 second_side: FlavorService) -> tuple[Pipeline, ...]:
            if self.passthrough:
                return ()
            out = []
            if first_side.flavor != PIVOT:
                out.append(first_side.pipeline(first))
            if second_side.flavor != PIVOT:
                out.append(second_side.pipeline(second))
            return tuple(out)

        self._request = pair("request_to_aog", "request_from_aog", app, provider)
        self._response = pair("response_to_aog", "response_from_aog", provider, app)
        self._request_steps = body_steps(self._request)
        # the request's body steps are all jsonata: they can run on a body the caller
        # already parsed (`request_parsed`); an action_if step matches the body's text
        self.parses_requests = bool(self._request_steps) and all(
            step.converter != "action_if" for step in self._request_steps)

    def _run(self, pipes: tuple[Pipeline, ...], body: bytes, headers: dict[str, str] | None,
             bindings: dict[str, Any]) -> Converted:
        """Shared request/response path; passthrough keeps the same bytes object."""
        headers = dict(headers or {})
        if not pipes or _opaque(headers):
            return Converted(body, headers)
        out = apply_body(pipes, body, bindings)
        return Converted(b"" if out is None else out, apply_headers(pipes, headers))

    def request(self, body: bytes, headers: dict[str, str] | None = None, *,
                model: str | None = None, stream: bool | None = None) -> Converted:
        """App request → provider request; `$model`/`$stream` default to the body's own."""
        bindings = _bindings(model, stream, None)
        if self._request and ("model" not in bindings or "stream" not in bindings):
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                if "model" not in bindings and doc.get("model") is not None:
                    bindings["model"] = doc["model"]
                if "stream" not in bindings and doc.get("stream") is not None:
                    bindings["stream"] = doc["stream"]
        return self._run(self._request, body, headers, bindings)

    def request_parsed(self, doc: Any, *, model: str | None = None,
                       stream: bool | None = None) -> Any:
        """`request` on a body the caller has already parsed (`doc`, never mutated), when
        `parses_requests`: the converted value, not its bytes (None: the body was
        dropped). A call converted app → AOG → provider parses its body once and
        serialises it once this way, instead of twice each (same steps, same bindings)."""
        bindings = _bindings(model, stream, None)
        if isinstance(doc, dict):
            if "model" not in bindings and doc.get("model") is not None:
                bindings["model"] = doc["model"]
            if "stream" not in bindings and doc.get("stream") is not None:
                bindings["stream"] = doc["stream"]
        value = doc
        for step in self._request_steps:
            value = _evaluate(step, value, bindings)
            if value is None:
                return None
        return value

    def response(self, body: bytes, headers: dict[str, str] | None = None, *,
                 model: str | None = None, id: str | None = None) -> Converted:
        """Provider response → app response."""
        return self._run(self._response, body, headers, _bindings(model, None, id or new_id()))

    def stream(self, headers: dict[str, str] | None = None, *, model: str | None = None,
               id: str | None = None) -> StreamConverter:
        """A converter for one streamed answer (one `$id` for all its chunks)."""
        return StreamConverter(self.app, self.provider, dict(headers or {}),
                               _bindings(model, None, id or new_id()))


class Converter:
    """Entry point: conversions by flavor name, cached per (service, app, provider, plugin)."""

    def __init__(self, registry: FlavorRegistry | None = None) -> None:
        """Share one registry (and so one set of compiled expressions) per process."""
        self.registry = registry or FlavorRegistry()
        self._cache: dict[tuple[str, str, str, str], Conversion] = {}

    def service(self, flavor: str, service: str, plugin_dir: Path | None = None) -> FlavorService:
        """A flavor's service definition (built-in, or from the plugin's templates folder)."""
        return self.registry.get(flavor, plugin_dir).service(service)

    def between(self, service: str, app_flavor: str, provider_flavor: str,
                plugin_dir: Path | None = None) -> Conversion:
        """The conversion for `service` from `app_flavor` to `provider_flavor` (cached)."""
        key = (service, app_flavor, provider_flavor, str(plugin_dir or ""))
        conv = self._cache.get(key)
        if conv is None:
            app = self.service(app_flavor, service)
            provider = self.service(provider_flavor, service, plugin_dir)
            conv = Conversion(app, provider)
            self._cache[key] = conv
        return conv


__all__ = [
    "Conversion",
    "ConvertError",
    "Converted",
    "Converter",
    "StreamConverter",
    "TemplateError",
    "apply_body",
    "apply_headers",
    "body_steps",
    "encode_body",
    "run_steps",
]
