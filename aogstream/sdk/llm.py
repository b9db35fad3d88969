"""`ctx.llm`: a plugin's own calls to the gateway's chat and embed services.

Inside any plugin built with `aogstream.sdk`, `self.ctx.llm` (the plugin's
`PluginContext`) reaches the models the gateway serves, with no key and no
configuration:

    result = self.ctx.llm.complete([{"role": "user", "content": "ping"}])
    result.text, result.model, result.usage.total_tokens

    result = await self.ctx.llm.acomplete_structured(
        instructions="Extract the person.", input=[{"type": "text", "text": note}],
        json_schema=PERSON_SCHEMA, schema_name="person")
    if result.content_type == "json":
        result.parsed["name"]

    vectors = (await self.ctx.llm.aembed(["one", "two"])).vectors

By default a call runs on the gateway's default chat route (the service's default
model and hybrid policy: what the gateway's users get). `provider=`, `model=`,
`agent_id=` and `profile=` are overrides the operator must grant in the gateway's
`config.yaml` (`plugins.entries.<plugin id>.llm.*`); without the grant the call raises
`PluginLlmTrustError`, whose message names the key to set.

The call goes over a unix socket the gateway made for this plugin alone (its path in
the environment), so the gateway knows who calls from the channel itself. Each call
opens its own connection: cancelling an `await` (or the host cancelling the request
this plugin serves) closes it and the gateway stops the call.

The sync twins are for blocking plugin code, which the SDK runs on worker threads: a
provider method written as plain `def` (see `sdk.blocking`). A sync call waits on a
blocking socket of its own, on its own thread, and never touches an event loop, so
it cannot deadlock one and the plugin's other requests go on being served meanwhile;
when the host cancels the request it runs for, the SDK cuts that socket, the call
ends at once with `PluginLlmError` code "cancelled", and the gateway stops the model.
Called straight from `async def` code, on the loop's own thread, a sync call still
works but cannot wait without holding that loop: every other request of the plugin
waits for it, and the SDK logs a warning once; `await` the `a*` twin there instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aogstream.rpc import hostcall as hc
from aogstream.sdk import blocking

log = logging.getLogger("aogstream.sdk")

# A little beyond the gateway's own clamp (600 s), so the gateway's timeout answer,
# not ours, reports a slow call.
CLIENT_TIMEOUT_MARGIN_S = 15.0
DEFAULT_WAIT_S = 135.0


class PluginLlmTrustError(PermissionError):
    """The gateway's operator has not granted an override this call asked for;
    `key` is the config key that would grant it."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class PluginLlmError(RuntimeError):
    """The call could not be served (no route, timeout, provider failure, recursion);
    `code` is the gateway's stable error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PluginLlmTextInput:
    text: str


@dataclass
class PluginLlmImageInput:
    """An image for a vision-capable route: raw `data` bytes, or a `url` (http(s) or
    data:)."""

    data: bytes | None = None
    url: str | None = None
    mime_type: str = "image/png"
    file_name: str = ""


PluginLlmInput = PluginLlmTextInput | PluginLlmImageInput | dict[str, Any]


@dataclass
class PluginLlmUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = None


@dataclass
class PluginLlmCompleteResult:
    text: str
    provider: str
    model: str
    agent_id: str
    usage: PluginLlmUsage
    audit: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginLlmStructuredResult:
    """`content_type` "json": `parsed` is the reply, valid against the schema;
    "text": it was not JSON or did not match (the raw reply is in `text`, the reason
    in `audit["reason"]`)."""

    text: str
    provider: str
    model: str
    agent_id: str
    usage: PluginLlmUsage
    audit: dict[str, Any] = field(default_factory=dict)
    parsed: Any = None
    content_type: str = "text"


@dataclass
class PluginLlmEmbedResult:
    vectors: list[list[float]]
    provider: str
    model: str
    usage: PluginLlmUsage
    audit: dict[str, Any] = field(default_factory=dict)


def _usage(raw: Any) -> PluginLlmUsage:
    u = raw if isinstance(raw, dict) else {}
    return PluginLlmUsage(
        int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0),
        int(u.get("total_tokens") or 0), int(u.get("cache_read_tokens") or 0),
        int(u.get("cache_write_tokens") or 0), u.get("cost_usd"))


def _input_block(block: Any, i: int) -> dict[str, Any]:
    """One `complete_structured` input → its wire form (image bytes as base64)."""
    if isinstance(block, PluginLlmTextInput):
        block = {"type": "text", "text": block.text}
    elif isinstance(block, PluginLlmImageInput):
        block = {"type": "image", "data": block.data, "url": block.url,
                 "mime_type": block.mime_type, "file_name": block.file_name}
    if not isinstance(block, dict):
        raise ValueError(f"Unsupported input block: {type(block).__name__}")
    kind = block.get("type")
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise ValueError("text input block requires 'text' string")
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return _image(block)
    raise ValueError(f"Unknown input block type: {kind!r}")


def _image(block: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "image", "mime_type": block.get("mime_type") or "image/png"}
    if block.get("url"):
        out["url"] = block["url"]
        return out
    data = block.get("data")
    if data is None:
        raise ValueError("image input block requires 'data' bytes or 'url'")
    if not isinstance(data, bytes | bytearray):
        raise ValueError("image input 'data' must be bytes")
    out["data"] = base64.b64encode(bytes(data)).decode()
    return out


def _message(msg: Any) -> Any:
    """A message whose content parts may hold image bytes → its wire form."""
    if isinstance(msg, dict) and isinstance(msg.get("content"), list):
        parts = [_image(p) if isinstance(p, dict) and p.get("type") == "image" else p
                 for p in msg["content"]]
        return {**msg, "content": parts}
    return msg


def _drop_none(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


def _wait_for(timeout: float | None) -> float:
    """How long to wait for the gateway's answer: the call's own timeout (the gateway
    clamps it to 600 s) plus a margin, so the gateway's timeout answer arrives first."""
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
        return min(float(timeout), 600.0) + CLIENT_TIMEOUT_MARGIN_S
    return DEFAULT_WAIT_S


class PluginLlm:
    """The plugin's LLM client; get it as `ctx.llm`, never build it yourself (the
    gateway decides who you are from the socket it gave this process)."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path if socket_path is not None else \
            os.environ.get(hc.HOST_SOCKET_ENV, "")

    # ---- the four shapes (and embed) --------------------------------------------------

    def complete(self, messages: Sequence[dict[str, Any]], *, provider: str | None = None,
                 model: str | None = None, temperature: float | None = None,
                 max_tokens: int | None = None, timeout: float | None = None,
                 agent_id: str | None = None, profile: str | None = None,
                 purpose: str | None = None) -> PluginLlmCompleteResult:
        args = self._complete_args(messages, provider, model, temperature, max_tokens,
                                   timeout, agent_id, profile, purpose)
        return self._complete_result(self._call("complete", args, timeout))

    async def acomplete(self, messages: Sequence[dict[str, Any]], *,
                        provider: str | None = None, model: str | None = None,
                        temperature: float | None = None, max_tokens: int | None = None,
                        timeout: float | None = None, agent_id: str | None = None,
                        profile: str | None = None,
                        purpose: str | None = None) -> PluginLlmCompleteResult:
        args = self._complete_args(messages, provider, model, temperature, max_tokens,
                                   timeout, agent_id, profile, purpose)
        return self._complete_result(await self._acall("complete", args, timeout))

    def complete_structured(self, *, instructions: str, input: Sequence[PluginLlmInput],
                            json_schema: dict[str, Any] | None = None, json_mode: bool = False,
                            schema_name: str | None = None, system_prompt: str | None = None,
                            provider: str | None = None, model: str | None = None,
                            temperature: float | None = None, max_tokens: int | None = None,
                            timeout: float | None = None, agent_id: str | None = None,
                            profile: str | None = None,
                            purpose: str | None = None) -> PluginLlmStructuredResult:
        args = self._structured_args("complete_structured", locals())
        return self._structured_result(self._call("complete_structured", args, timeout))

    async def acomplete_structured(
            self, *, instructions: str, input: Sequence[PluginLlmInput],
            json_schema: dict[str, Any] | None = None, json_mode: bool = False,
            schema_name: str | None = None, system_prompt: str | None = None,
            provider: str | None = None, model: str | None = None,
            temperature: float | None = None, max_tokens: int | None = None,
            timeout: float | None = None, agent_id: str | None = None,
            profile: str | None = None, purpose: str | None = None,
    ) -> PluginLlmStructuredResult:
        args = self._structured_args("acomplete_structured", locals())
        return self._structured_result(
            await self._acall("complete_structured", args, timeout))

    def embed(self, inputs: Sequence[str] | str, *, model: str | None = None,
              dimensions: int | None = None, purpose: str | None = None,
              provider: str | None = None,
              timeout: float | None = None) -> PluginLlmEmbedResult:
        args = self._embed_args(inputs, model, dimensions, purpose, provider, timeout)
        return self._embed_result(self._call("embed", args, timeout))

    async def aembed(self, inputs: Sequence[str] | str, *, model: str | None = None,
                     dimensions: int | None = None, purpose: str | None = None,
                     provider: str | None = None,
                     timeout: float | None = None) -> PluginLlmEmbedResult:
        args = self._embed_args(inputs, model, dimensions, purpose, provider, timeout)
        return self._embed_result(await self._acall("embed", args, timeout))

    # ---- arguments and results ------------------------------------------------------------

    @staticmethod
    def _complete_args(messages: Any, provider: str | None, model: str | None,
                       temperature: float | None, max_tokens: int | None,
                       timeout: float | None, agent_id: str | None, profile: str | None,
                       purpose: str | None) -> dict[str, Any]:
        if isinstance(messages, str | bytes) or not isinstance(messages, Sequence) \
                or not messages:
            raise ValueError("messages must be a non-empty list of {\"role\": ..., "
                             "\"content\": ...} dicts")
        return _drop_none({"messages": [_message(m) for m in messages], "provider": provider,
                           "model": model, "temperature": temperature,
                           "max_tokens": max_tokens, "timeout": timeout,
                           "agent_id": agent_id, "profile": profile, "purpose": purpose})

    @staticmethod
    def _structured_args(name: str, given: dict[str, Any]) -> dict[str, Any]:
        instructions, blocks = given["instructions"], given["input"]
        if not isinstance(instructions, str) or not instructions.strip():
            raise ValueError(f"{name} requires non-empty instructions")
        if isinstance(blocks, str | bytes) or not isinstance(blocks, Sequence) or not blocks:
            raise ValueError(f"{name} requires at least one input block")
        args = {k: given[k] for k in (
            "instructions", "json_schema", "schema_name", "system_prompt", "provider",
            "model", "temperature", "max_tokens", "timeout", "agent_id", "profile",
            "purpose")}
        args["json_mode"] = bool(given["json_mode"])
        args["input"] = [_input_block(b, i) for i, b in enumerate(blocks)]
        return _drop_none(args)

    @staticmethod
    def _embed_args(inputs: Any, model: str | None, dimensions: int | None,
                    purpose: str | None, provider: str | None,
                    timeout: float | None) -> dict[str, Any]:
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, Sequence) or not inputs or \
                not all(isinstance(s, str) for s in inputs):
            raise ValueError("embed needs inputs: a non-empty list of strings")
        return _drop_none({"inputs": list(inputs), "model": model, "dimensions": dimensions,
                           "purpose": purpose, "provider": provider, "timeout": timeout})

    @staticmethod
    def _complete_result(r: dict[str, Any]) -> PluginLlmCompleteResult:
        return PluginLlmCompleteResult(str(r.get("text") or ""), str(r.get("provider") or ""),
                                       str(r.get("model") or ""),
                                       str(r.get("agent_id") or "default"),
                                       _usage(r.get("usage")), dict(r.get("audit") or {}))

    @staticmethod
    def _structured_result(r: dict[str, Any]) -> PluginLlmStructuredResult:
        base = PluginLlm._complete_result(r)
        return PluginLlmStructuredResult(base.text, base.provider, base.model, base.agent_id,
                                         base.usage, base.audit, r.get("parsed"),
                                         str(r.get("content_type") or "text"))

    @staticmethod
    def _embed_result(r: dict[str, Any]) -> PluginLlmEmbedResult:
        return PluginLlmEmbedResult(list(r.get("vectors") or []), str(r.get("provider") or ""),
                                    str(r.get("model") or ""), _usage(r.get("usage")),
                                    dict(r.get("audit") or {}))

    # ---- the wire ------------------------------------------------------------------------

    def _path(self) -> str:
        if not self.socket_path:
            raise PluginLlmError(hc.ERROR_NO_ROUTE, (
                f"this plugin was not given LLM access ({hc.HOST_SOCKET_ENV} is not set): "
                f"ctx.llm works in plugins launched by an aogstream gateway"))
        return self.socket_path

    @staticmethod
    def _answer(frame: dict[str, Any]) -> dict[str, Any]:
        result = frame.get("result")
        if frame.get("ok") is True and isinstance(result, dict):
            return result
        raw = frame.get("error")
        err: dict[str, Any] = raw if isinstance(raw, dict) else {}
        code, message = str(err.get("code") or hc.ERROR_INTERNAL), str(err.get("message") or
                                                                        "the call failed")
        if code == hc.ERROR_TRUST_DENIED:
            raise PluginLlmTrustError(message, str(err.get("key") or ""))
        if code in (hc.ERROR_INVALID_INPUT, hc.ERROR_TOO_LARGE):
            raise ValueError(message)
        raise PluginLlmError(code, message)

    def _call(self, op: str, args: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """A sync twin's exchange: a plain blocking socket on the calling thread (no
        event loop involved, so nothing can deadlock on it), cut when the request it
        runs for is cancelled (`sdk.blocking.request_scope`)."""
        if blocking.on_loop_thread():
            _warn_held_loop(op)
        scope = blocking.current_scope()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(_wait_for(timeout))

        def cut() -> None:  # from the loop's thread: wakes this thread's recv
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

        try:
            if scope is not None and not scope.add(cut):
                raise _cancelled()
            try:
                return self._exchange(sock, op, args, scope)
            except PluginLlmError:
                if scope is not None and scope.cancelled:
                    raise _cancelled() from None
                raise
        finally:
            if scope is not None:
                scope.discard(cut)
            sock.close()

    def _exchange(self, sock: socket.socket, op: str, args: dict[str, Any],
                  scope: blocking.RequestScope | None) -> dict[str, Any]:
        try:
            sock.connect(self._path())
        except OSError as exc:
            raise PluginLlmError(hc.ERROR_NO_ROUTE, f"cannot reach the gateway's LLM "
                                 f"service: {exc.strerror or exc}") from None
        if scope is not None and scope.cancelled:  # cut while connecting: no effect
            raise _cancelled()
        try:
            sock.sendall(hc.encode({"op": op, "args": args}))
            n = hc.frame_length(_recv_exactly(sock, hc.HEADER.size), hc.MAX_ANSWER_BYTES)
            frame = hc.decode(_recv_exactly(sock, n))
        except TimeoutError:
            raise PluginLlmError(hc.ERROR_TIMEOUT, "the gateway did not answer in "
                                 "time") from None
        except (EOFError, hc.FrameError, OSError) as exc:
            raise PluginLlmError(hc.ERROR_INTERNAL, f"the gateway's answer was cut "
                                 f"short: {exc}") from None
        return self._answer(frame)

    async def _acall(self, op: str, args: dict[str, Any],
                     timeout: float | None) -> dict[str, Any]:
        """Async: the same exchange on the running asyncio loop; cancelling the await
        closes the connection, which cancels the call in the gateway."""
        try:
            reader, writer = await asyncio.open_unix_connection(
                self._path(), limit=hc.MAX_ANSWER_BYTES)
        except OSError as exc:
            raise PluginLlmError(hc.ERROR_NO_ROUTE, f"cannot reach the gateway's LLM "
                                 f"service: {exc.strerror or exc}") from None
        try:
            writer.write(hc.encode({"op": op, "args": args}))
            async with asyncio.timeout(_wait_for(timeout)):
                await writer.drain()
                try:
                    header = await reader.readexactly(hc.HEADER.size)
                    n = hc.frame_length(header, hc.MAX_ANSWER_BYTES)
                    frame = hc.decode(await reader.readexactly(n))
                except (asyncio.IncompleteReadError, hc.FrameError) as exc:
                    raise PluginLlmError(hc.ERROR_INTERNAL, f"the gateway's answer was "
                                         f"cut short: {exc}") from None
        except TimeoutError:
            raise PluginLlmError(hc.ERROR_TIMEOUT, "the gateway did not answer in "
                                 "time") from None
        finally:
            writer.close()  # a cancelled call ends here: the gateway sees the close
        return self._answer(frame)


def _cancelled() -> PluginLlmError:
    return PluginLlmError(hc.ERROR_CANCELLED, "the request this call was made for was "
                          "cancelled")


_warned_held_loop = False


def _warn_held_loop(op: str) -> None:
    """Say once per process that a sync call is holding the event loop, and what to do."""
    global _warned_held_loop
    if _warned_held_loop:
        return
    _warned_held_loop = True
    log.warning("ctx.llm.%s was called from async code on the event loop's thread: every "
                "other request of this plugin waits until it returns. Await "
                "ctx.llm.a%s there, or write the handler as a plain def (the SDK runs it "
                "on a worker thread)", op, op)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError("the gateway closed the connection")
        buf += chunk
    return bytes(buf)


class PluginContext:
    """What the gateway offers a running plugin: `llm` (see the module docstring)."""

    def __init__(self, socket_path: str | None = None) -> None:
        self._socket_path = socket_path
        self._llm: PluginLlm | None = None

    @property
    def llm(self) -> PluginLlm:
        if self._llm is None:
            self._llm = PluginLlm(self._socket_path)
        return self._llm
