"""Plugin LLM access, the host side: plugins call the gateway's own chat and embed.

Each plugin process gets a unix socket of its own, made when it is first launched
(`env_for`, called by the supervisor for the plugin's environment): a 0600 socket in
the 0700 folder of this gateway, its path in `rpc.hostcall.HOST_SOCKET_ENV`. The
socket is bound to that plugin's id, so the caller's identity comes from the channel;
a `plugin_id` in a request is never read. The wire is `rpc.hostcall` (one call per
connection: a plugin that gives up closes it, and the call is cancelled).

A call is shaped and bounded (`llm_messages`, clamps in `llm_gate`), passes the trust
gate (`llm_gate.check_overrides` on the policy in `<data dir>/config.yaml`, read when
it changes; fail closed), and then takes the gateway's normal routing for `chat` (or
`vision` when it carries images, `embed` for embeddings): the service's default
model and hybrid policy, fallback to the next provider on provider trouble, the
route's own timeout inside the call's clamped one. Two rules keep calls from looping:

* a call never reaches a plugin of its own chain: the caller, and every plugin on
  whose behalf the caller is serving a host call right now (the host started those
  calls, so it knows them; the plugin cannot forge them);
* a chain is at most `MAX_DEPTH` plugins long.

Serving a call needs nothing from the calling plugin, so a plugin that calls
`ctx.llm` while the host waits on its answer does not deadlock.

Every call, whether it succeeded, failed or was denied, writes one structured log
line (`aogstream.plugin_llm`: plugin, op, purpose, provider, model, tokens, latency,
outcome; never prompt text or keys) and adds to the plugin's counters. A metrics
exporter reads them with `counters_snapshot()` (no gateway object needed): they live
in the process that launches the plugins, the primary when there are workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

from aogstream import errors
from aogstream.host import llm_gate as g
from aogstream.host import llm_messages as lm
from aogstream.invocation import Mode
from aogstream.plugin_config import PluginConfigFile
from aogstream.rpc import hostcall as hc

if TYPE_CHECKING:
    from aogstream.gateway import Gateway, Route

log = logging.getLogger("aogstream.plugin_llm")

MAX_DEPTH = 4
DEFAULT_TIMEOUT_S = 120.0
MAX_CONNECTIONS_PER_PLUGIN = 16
SOCKET_DIR_PREFIX = "aogllm-"


class CallError(Exception):
    """A call that ends with an error answer (code from `rpc.hostcall`)."""

    def __init__(self, code: str, message: str, key: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.key = key


@attrs.define
class Counters:
    """One plugin's LLM use since the gateway started."""

    calls: int = 0
    succeeded: int = 0
    failed: int = 0
    denied: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms_total: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class PluginLlmStats:
    """One plugin's LLM use at one moment: its counters since the gateway started
    (`calls` = `succeeded` + `failed` + `denied`) and the calls in flight now."""

    plugin_id: str
    calls: int
    succeeded: int
    failed: int
    denied: int
    input_tokens: int
    output_tokens: int
    latency_ms_total: float
    in_flight: int


_STAT_FIELDS = ("calls", "succeeded", "failed", "denied", "input_tokens", "output_tokens",
                "latency_ms_total", "in_flight")
_running: weakref.WeakSet[PluginLlmHost] = weakref.WeakSet()


def counters_snapshot() -> list[PluginLlmStats]:
    """Every plugin's LLM counters in this process, sorted by plugin id: a copy, safe
    to read from a metrics handler. Empty in a process that launches no plugins (a
    worker) and before the first call. Plugins served by more than one host service
    (only tests run several gateways in one process) are added up."""
    merged: dict[str, PluginLlmStats] = {}
    for host in list(_running):
        for stats in host.snapshot():
            seen = merged.get(stats.plugin_id)
            merged[stats.plugin_id] = stats if seen is None else PluginLlmStats(
                stats.plugin_id, *(getattr(seen, f) + getattr(stats, f)
                                   for f in _STAT_FIELDS))
    return [merged[k] for k in sorted(merged)]


@attrs.define
class _Audit:
    """What the log line of one call says (filled in as the call goes)."""

    plugin_id: str
    op: str
    request_id: str
    purpose: str = ""
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    outcome: str = "failed"
    code: str = ""
    content_type: str = ""


class PluginLlmHost:
    """The host service of one gateway process (the one that launches plugins)."""

    def __init__(self, gateway: Gateway, config_file: PluginConfigFile | None = None) -> None:
        self.gateway = gateway
        self.config_file = config_file or PluginConfigFile.in_data_dir(gateway.config.data_dir)
        self.counters: dict[str, Counters] = {}
        self._dir: Path | None = None
        self._nursery: trio.Nursery | None = None
        self._sockets: dict[str, str] = {}
        self._connections: dict[str, int] = {}
        # plugin id → the chains of the host calls it is serving right now
        self._serving: dict[str, list[frozenset[str]]] = {}

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the plugins' sockets until cancelled; the folder goes with it."""
        self._dir = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))  # mode 0700
        _running.add(self)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            _running.discard(self)
            self._nursery = None
            shutil.rmtree(self._dir, ignore_errors=True)

    def snapshot(self) -> list[PluginLlmStats]:
        """This service's per-plugin counters (see `counters_snapshot`)."""
        ids = set(self.counters) | {p for p, n in self._connections.items() if n}
        empty = Counters()
        return [PluginLlmStats(p, **self.counters.get(p, empty).as_dict(),
                               in_flight=self._connections.get(p, 0)) for p in sorted(ids)]

    def env_for(self, plugin_id: str) -> dict[str, str]:
        """The environment that lets `plugin_id`'s process call the host: the path of
        its own socket, made (and served) the first time it is asked for."""
        if self._nursery is None or self._dir is None:
            return {}
        path = self._sockets.get(plugin_id)
        if path is None:
            path = str(self._dir / f"p{len(self._sockets)}.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            sock.listen(64)
            sock.setblocking(False)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            self._sockets[plugin_id] = path
            self._nursery.start_soon(self._accept, listener, plugin_id)
        return {hc.HOST_SOCKET_ENV: path}

    async def _accept(self, listener: trio.SocketListener, plugin_id: str) -> None:
        async with listener, trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
                if self._connections.get(plugin_id, 0) >= MAX_CONNECTIONS_PER_PLUGIN:
                    nursery.start_soon(self._refuse, stream, plugin_id)
                    continue
                nursery.start_soon(self._connection, stream, plugin_id)

    async def _refuse(self, stream: trio.SocketStream, plugin_id: str) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with stream:
                await stream.send_all(hc.encode({"ok": False, "error": {
                    "code": hc.ERROR_TOO_LARGE,
                    "message": f"plugin {plugin_id} already has "
                               f"{MAX_CONNECTIONS_PER_PLUGIN} LLM calls in flight; "
                               f"wait for one to finish"}}))

    # ---- one connection, one call -----------------------------------------------------

    async def _connection(self, stream: trio.SocketStream, plugin_id: str) -> None:
        self._connections[plugin_id] = self._connections.get(plugin_id, 0) + 1
        try:
            async with stream:
                try:
                    with trio.fail_after(10):
                        request = await _read_frame(stream, hc.MAX_REQUEST_BYTES)
                except (hc.FrameError, trio.TooSlowError, trio.BrokenResourceError,
                        EOFError) as exc:
                    await _send_quietly(stream, {"ok": False, "error": {
                        "code": hc.ERROR_INVALID_INPUT, "message": f"bad request: {exc}"}})
                    return
                answer: dict[str, Any] | None = None
                async with trio.open_nursery() as nursery:
                    # the plugin closing its end (it gave up, or it died) cancels the call
                    nursery.start_soon(_cancel_on_eof, stream, nursery.cancel_scope)
                    answer = await self.handle(plugin_id, request)
                    nursery.cancel_scope.cancel()
                if answer is not None:
                    await _send_quietly(stream, answer)
        finally:
            self._connections[plugin_id] -= 1

    async def handle(self, plugin_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request of `plugin_id` → its answer frame (never raises CallError)."""
        op = request.get("op")
        args = request.get("args")
        audit = _Audit(plugin_id, str(op)[:40], uuid.uuid4().hex[:16])
        started = time.monotonic()
        try:
            if op not in hc.OPS:
                raise CallError(hc.ERROR_INVALID_INPUT,
                                f"unknown op {str(op)[:40]!r}; one of {', '.join(hc.OPS)}")
            if not isinstance(args, dict):
                raise CallError(hc.ERROR_INVALID_INPUT, "'args' must be an object")
            purpose = args.get("purpose")
            audit.purpose = purpose[:200] if isinstance(purpose, str) else ""
            if op == "embed":
                result = await self._embed(plugin_id, args, audit)
            else:
                result = await self._complete(plugin_id, args, audit,
                                              structured=op == "complete_structured")
            audit.outcome = "succeeded"
            return {"ok": True, "result": result}
        except CallError as exc:
            audit.code = exc.code
            audit.outcome = "denied" if exc.code == hc.ERROR_TRUST_DENIED else "failed"
            return {"ok": False, "error": {"code": exc.code, "message": exc.message,
                                           "key": exc.key}}
        except ValueError as exc:
            audit.code = hc.ERROR_INVALID_INPUT
            return {"ok": False, "error": {"code": hc.ERROR_INVALID_INPUT,
                                           "message": str(exc)}}
        except Exception as exc:
            log.exception("plugin_llm: %s %s failed", plugin_id, op)
            audit.code = hc.ERROR_INTERNAL
            return {"ok": False, "error": {"code": hc.ERROR_INTERNAL,
                                           "message": f"the gateway failed: {type(exc).__name__}"}}
        except BaseException:  # trio.Cancelled, possibly inside a group: the plugin left
            audit.code = hc.ERROR_CANCELLED
            raise
        finally:
            self._record(audit, time.monotonic() - started)

    def _record(self, audit: _Audit, seconds: float) -> None:
        c = self.counters.setdefault(audit.plugin_id, Counters())
        c.calls += 1
        c.input_tokens += audit.input_tokens
        c.output_tokens += audit.output_tokens
        c.latency_ms_total += seconds * 1000
        if audit.outcome == "succeeded":
            c.succeeded += 1
        elif audit.outcome == "denied":
            c.denied += 1
        else:
            c.failed += 1
        fields = {"plugin": audit.plugin_id, "op": audit.op, "outcome": audit.outcome,
                  "code": audit.code, "purpose": audit.purpose, "provider": audit.provider,
                  "model": audit.model, "input_tokens": audit.input_tokens,
                  "output_tokens": audit.output_tokens,
                  "content_type": audit.content_type,
                  "latency_ms": round(seconds * 1000, 1), "request_id": audit.request_id}
        level = logging.WARNING if audit.outcome == "denied" else (
            logging.INFO if audit.outcome == "succeeded" else logging.WARNING)
        log.log(level, "plugin_llm %s", json.dumps(fields, separators=(",", ":")))

    # ---- the gate and the chain ---------------------------------------------------------

    def _gate(self, plugin_id: str, args: dict[str, Any]) -> g.Granted:
        snap = self.config_file.read()
        policy = g.policy_from_config(snap.data, plugin_id, problem=snap.error)
        overrides = {}
        for name in ("provider", "model", "agent_id", "profile"):
            value = args.get(name)
            if value is not None and not isinstance(value, str):
                raise CallError(hc.ERROR_INVALID_INPUT, f"{name} must be a string")
            overrides[name] = value or None
        try:
            return g.check_overrides(policy, plugin_id, **overrides)
        except g.TrustDenied as exc:
            raise CallError(hc.ERROR_TRUST_DENIED, exc.message, exc.key) from None

    def _chain(self, plugin_id: str) -> frozenset[str]:
        chains = self._serving.get(plugin_id, [])
        chain = frozenset({plugin_id}).union(*chains)
        if len(chain) > MAX_DEPTH or any(len(c) >= MAX_DEPTH for c in chains):
            raise CallError(hc.ERROR_RECURSION,
                            f"this call would be the {len(chain) + 1}th plugin in a chain of "
                            f"LLM calls ({' → '.join(sorted(chain))}); the limit is "
                            f"{MAX_DEPTH}")
        return chain

    @contextlib.contextmanager
    def _serving_for(self, provider: str, chain: frozenset[str]) -> Iterator[None]:
        self._serving.setdefault(provider, []).append(chain)
        try:
            yield
        finally:
            self._serving[provider].remove(chain)
            if not self._serving[provider]:
                del self._serving[provider]

    def _routes(self, service: str, body: dict[str, Any], chain: frozenset[str],
                provider: str | None) -> list[Route]:
        try:
            routes = self.gateway.routes(service, body)
        except errors.GatewayError as exc:
            code = hc.ERROR_NO_ROUTE if exc.status in (404, 503) else hc.ERROR_INVALID_INPUT
            if service == "vision" and exc.bcode == errors.SERVICE_NOT_FOUND:
                raise CallError(hc.ERROR_NO_ROUTE, (
                    "this call has image inputs and no vision-capable route exists: no "
                    "plugin serves the 'vision' service; install or enable a plugin that "
                    "serves 'vision' (a vision-capable chat model), or send text only"
                )) from None
            raise CallError(code, exc.message) from None
        if provider:
            want = provider.lower()
            picked = [r for r in routes if want in (r.provider.name.lower(),
                                                    r.provider_name.lower())]
            if not picked:
                names = sorted({r.provider.name for r in routes})
                raise CallError(hc.ERROR_NO_ROUTE,
                                f"provider {provider!r} does not serve {service!r}; the "
                                f"providers that do: {', '.join(names) or 'none'}")
            routes = picked
        outside = [r for r in routes if r.provider.name not in chain]
        if not outside:
            raise CallError(hc.ERROR_RECURSION,
                            f"the only providers of {service!r} here are plugins of this "
                            f"call's own chain ({', '.join(sorted(chain))}); a plugin's LLM "
                            f"call never re-enters itself: add another provider of "
                            f"{service!r}")
        return outside

    async def _invoke(self, routes: list[Route], body: dict[str, Any],
                      chain: frozenset[str], deadline_s: float) -> tuple[Route, dict[str, Any]]:
        """The first answer of `routes` (falling back on provider trouble), in AOG's
        shape, within `deadline_s`."""
        from aogstream.gateway import may_fall_back

        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        last: errors.GatewayError | None = None
        with trio.move_on_after(deadline_s) as scope:
            for i, route in enumerate(routes):
                if route.definition.config_ref.partition(":")[0] not in ("", "aog"):
                    last = errors.GatewayError(errors.BAD_REQUEST, f"{route.provider_name} "
                                               f"speaks {route.definition.config_ref}, which "
                                               f"plugin LLM calls do not convert yet")
                    continue
                failed: errors.GatewayError | None = None
                data = b""  # the answer when `failed` stays None (for the type checker)
                with self._serving_for(route.provider.name, chain):
                    async with self.gateway.invoke(route, Mode.UNARY, raw) as inv:
                        try:  # inside the block: the invocation's nursery would wrap it
                            data = await inv.result()
                        except errors.GatewayError as exc:
                            failed = exc
                if failed is not None:
                    last = failed
                    if i < len(routes) - 1 and may_fall_back(failed):
                        log.warning("plugin_llm: %s failed (%s); trying %s",
                                    route.provider_name, failed.message,
                                    routes[i + 1].provider_name)
                        continue
                    break
                try:
                    answer = json.loads(data)
                except ValueError:
                    raise CallError(hc.ERROR_UPSTREAM, f"{route.provider_name} answered with "
                                    f"something that is not JSON") from None
                if not isinstance(answer, dict):
                    raise CallError(hc.ERROR_UPSTREAM,
                                    f"{route.provider_name} answered with a non-object")
                return route, answer
        if scope.cancelled_caught:
            raise CallError(hc.ERROR_TIMEOUT, f"no answer within {deadline_s:g} s (the "
                            f"call's timeout; pass timeout= up to {g.TIMEOUT_MAX_S:g} s)")
        assert last is not None
        code = hc.ERROR_TIMEOUT if last.bcode == errors.PLUGIN_TIMEOUT else (
            hc.ERROR_INVALID_INPUT if last.status < 500 else hc.ERROR_UPSTREAM)
        raise CallError(code, last.message)

    # ---- the operations -----------------------------------------------------------------

    async def _complete(self, plugin_id: str, args: dict[str, Any], audit: _Audit, *,
                        structured: bool) -> dict[str, Any]:
        json_schema = args.get("json_schema") if structured else None
        json_mode = bool(args.get("json_mode")) if structured else False
        if structured:
            shaped = lm.structured_messages(
                instructions=args.get("instructions"), inputs=args.get("input"),
                json_schema=json_schema, json_mode=json_mode,
                schema_name=args.get("schema_name"), system_prompt=args.get("system_prompt"))
        else:
            shaped = lm.chat_messages(args.get("messages"))
        granted = self._gate(plugin_id, args)
        chain = self._chain(plugin_id)
        timeout = g.clamp_timeout(args.get("timeout"), DEFAULT_TIMEOUT_S)
        body: dict[str, Any] = {"stream": False}
        temperature = args.get("temperature")
        if temperature is not None:
            if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
                    or not math.isfinite(temperature):
                raise ValueError("temperature must be a number")
            body["temperature"] = float(temperature)
        max_tokens = g.clamp_max_tokens(args.get("max_tokens"))
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if granted.model:
            body["model"] = granted.model
        fmt = lm.response_format(json_schema, json_mode)
        if fmt is not None:
            body["response_format"] = fmt
        service = "vision" if shaped.images else "chat"
        body["messages"] = shaped.messages if shaped.images else lm.flatten_text(
            shaped.messages)
        routes = self._routes(service, body, chain, granted.provider)
        route, answer = await self._invoke(routes, body, chain, timeout)
        text = _answer_text(answer)
        usage = _usage(answer.get("usage"))
        audit.provider = route.provider.name
        audit.model = str(answer.get("model") or granted.model or
                          route.definition.default_model or "default")
        audit.input_tokens, audit.output_tokens = usage["input_tokens"], usage["output_tokens"]
        schema_name = args.get("schema_name") if isinstance(args.get("schema_name"), str) else ""
        result: dict[str, Any] = {
            "text": text, "provider": audit.provider, "model": audit.model,
            "agent_id": granted.agent_id or "default", "usage": usage,
            "audit": {"plugin_id": plugin_id, "purpose": audit.purpose,
                      "profile": granted.profile or "", "request_id": audit.request_id,
                      "route": route.provider_name},
        }
        if structured:
            parsed, content_type, reason = lm.parse_structured(text, json_schema, json_mode)
            result["audit"]["schema_name"] = schema_name or ""
            result.update(parsed=parsed, content_type=content_type)
            if reason:
                result["audit"]["reason"] = reason
            audit.content_type = content_type
        return result

    async def _embed(self, plugin_id: str, args: dict[str, Any],
                     audit: _Audit) -> dict[str, Any]:
        inputs = args.get("inputs")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or \
                not all(isinstance(s, str) for s in inputs):
            raise ValueError("embed needs inputs: a non-empty list of strings")
        if len(inputs) > g.MAX_EMBED_INPUTS:
            raise CallError(hc.ERROR_TOO_LARGE, f"{len(inputs)} inputs; the limit is "
                            f"{g.MAX_EMBED_INPUTS} per call (send several calls)")
        total = sum(len(s.encode()) for s in inputs)
        if total > g.MAX_TEXT_BYTES:
            raise CallError(hc.ERROR_TOO_LARGE, f"the inputs are {total} bytes; the limit "
                            f"is {g.MAX_TEXT_BYTES}")
        granted = self._gate(plugin_id, args)
        chain = self._chain(plugin_id)
        timeout = g.clamp_timeout(args.get("timeout"), DEFAULT_TIMEOUT_S)
        body: dict[str, Any] = {"input": inputs}
        dims = args.get("dimensions")
        if dims is not None:
            if isinstance(dims, bool) or not isinstance(dims, int) or dims <= 0:
                raise ValueError("dimensions must be a positive integer")
            body["dimensions"] = dims
        if granted.model:
            body["model"] = granted.model
        routes = self._routes("embed", body, chain, granted.provider)
        route, answer = await self._invoke(routes, body, chain, timeout)
        data = answer.get("data")
        if not isinstance(data, list):
            raise CallError(hc.ERROR_UPSTREAM, f"{route.provider_name}'s embed answer has "
                            f"no 'data' list")
        vectors = [item.get("embedding") for item in sorted(
            (d for d in data if isinstance(d, dict)), key=lambda d: d.get("index", 0))]
        usage = _usage(answer.get("usage"))
        audit.provider = route.provider.name
        audit.model = str(answer.get("model") or granted.model or
                          route.definition.default_model or "default")
        audit.input_tokens = usage["input_tokens"]
        return {"vectors": vectors, "provider": audit.provider, "model": audit.model,
                "usage": usage, "audit": {"plugin_id": plugin_id, "purpose": audit.purpose,
                                          "request_id": audit.request_id,
                                          "route": route.provider_name}}


# ---- helpers --------------------------------------------------------------------------------


def _answer_text(answer: dict[str, Any]) -> str:
    """The reply of an AOG chat answer (`message.content`), or of an OpenAI-shaped
    one (`choices[0].message.content`)."""
    msg = answer.get("message")
    if not isinstance(msg, dict):
        choices = answer.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            msg = choices[0].get("message")
    content = msg.get("content") if isinstance(msg, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(raw: Any) -> dict[str, Any]:
    u = raw if isinstance(raw, dict) else {}
    inp = _int(u.get("prompt_tokens")) or _int(u.get("input_tokens"))
    out = _int(u.get("completion_tokens")) or _int(u.get("output_tokens"))
    details = u.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return {"input_tokens": inp, "output_tokens": out,
            "total_tokens": _int(u.get("total_tokens")) or inp + out,
            "cache_read_tokens": _int(u.get("cache_read_input_tokens")) or
            _int(u.get("cache_read_tokens")) or cached,
            "cache_write_tokens": _int(u.get("cache_creation_input_tokens")) or
            _int(u.get("cache_write_tokens")),
            "cost_usd": None}


async def _read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the plugin closed the connection mid-frame")
        buf += chunk
    return bytes(buf)


async def _read_frame(stream: trio.SocketStream, limit: int) -> dict[str, Any]:
    n = hc.frame_length(await _read_exactly(stream, hc.HEADER.size), limit)
    return hc.decode(await _read_exactly(stream, n))


async def _cancel_on_eof(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """The plugin sends nothing after its request: any read end means it went away."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


async def _send_quietly(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(hc.encode(obj))
