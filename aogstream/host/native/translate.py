"""Translating for a native executor: the gateway's own translators first, the plugins'
`request.translate` / `response.translate` where it has none, and the normalizer chains.

Where: `NativeProvider` serves every native executor with an `openai` (chat) client
(the doors convert the rest), so the pair is (`openai`, the executor's request format)
on the way in and (the executor's answer format, `openai`) on the way out. When the
formats are equal nothing is translated and none of these hooks is called (spec §9.3,
as CPA: an executor that speaks the client's format gets the body as sent).

Precedence (spec §3.2, "native first, plugins fill gaps"):
- requests: when the gateway translates the pair (`convert.formats`), it does, then
  `request.normalize` runs as a chain over every `request_normalizer` (priority order,
  each seeing the previous one's body; an empty `Body` leaves it unchanged); when it
  does not, the normalizers run first, on the client's body, then the
  `request_translator`s are asked in order and the first non-empty `Body` wins;
- answers (unary, and each stream chunk with `Stream: true`): `response.normalize_before`
  as a chain over every `response_before_translator`, the translation (the gateway's
  own, else the first `response_translator` with a non-empty `Body`), then
  `response.normalize_after` as a chain over every `response_after_translator` (per
  chat chunk of a stream). A stream chunk no plugin translator handles is dropped (a
  keep-alive in the executor's format has no chat form); a unary answer no plugin
  translator handles is an error.
A hook that fails or answers nothing counts as "not handled". When no plugin translates
a pair the gateway does not, the request fails with a clear 501 naming the formats;
an executor whose declared formats no translator reaches is not routed at all
(`negotiation`, `loader`). A plugin translator's stream answer may carry several chat
chunks, as bare JSON or `data:` frames; each one goes on through the after-chain.

The directions in the requests: `FromFormat` is the format `Body` is in and `ToFormat`
the one wanted (for answers: the executor's output format, then `openai`);
`OriginalRequest` is the client's chat request and `TranslatedRequest` the body the
executor got.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aogstream import errors
from aogstream.convert import formats, upstream
from aogstream.convert.engine import ConvertError
from aogstream.host.native import gojson as gj
from aogstream.host.native.abi import CallError
from aogstream.host.native.negotiation import native

if TYPE_CHECKING:
    from aogstream.host.native.hooks import Hooks, RequestInfo
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")

_FAILED = (CallError, gj.ReplyError, gj.EnvelopeError)


def compact(value: Any) -> bytes:
    """JSON as Go writes it (no spaces): C plugins search request text for `"key":value`."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def native_request(plugin: NativePlugin, chat: bytes, fmt: str) -> bytes:
    """The chat request in format `fmt`, by the gateway's own translators."""
    if fmt == formats.OPENAI:
        return chat
    try:
        body = json.loads(chat)
        if not isinstance(body, dict):
            raise ConvertError("the chat request is not an object")
        out = formats.request_from_chat(fmt, body)
    except (ValueError, ConvertError) as exc:
        raise errors.GatewayError(errors.PLUGIN_BAD_REQUEST, (
            f"cannot translate the request for native plugin {plugin.id} ({fmt}): "
            f"{exc}")) from None
    return compact(out)


def native_answer(plugin: NativePlugin, payload: bytes, fmt: str) -> bytes:
    """An executor's unary answer of format `fmt` in the chat form."""
    if fmt == formats.OPENAI:
        return payload
    try:
        body = json.loads(payload)
        if not isinstance(body, dict):
            raise ConvertError("the answer is not a JSON object")
        out = formats.response_to_chat(fmt, body)
    except (ValueError, ConvertError) as exc:
        raise errors.GatewayError(errors.PLUGIN_SERVICE_ERROR, (
            f"native plugin {plugin.id} answered no {fmt} answer aogstream can read: "
            f"{exc}")) from None
    return compact(out)


def native_chunks(plugin: NativePlugin, reader: upstream.UpstreamToChat,
                  item: bytes) -> list[bytes]:
    """One chunk of an executor stream in another format (an SSE fragment or bare
    event JSON) as the chat chunks it makes."""
    try:
        return [compact(c)
                for event in upstream.sse_events(bytes(item)) for c in reader.feed(event)]
    except ConvertError as exc:
        raise errors.GatewayError(errors.PLUGIN_SERVICE_ERROR,
                                  f"native plugin {plugin.id}: {exc}") from None


def chat_chunks(data: bytes) -> list[bytes]:
    """The chat chunks in a plugin translator's stream answer: bare JSON (a line each)
    or `data:` frames, one or several; `[DONE]` and blank frames skipped, unparsable
    text kept as it is (relayed, never crashed on: spec §9.7)."""
    text = data.strip()
    if not text.startswith(b"data:") and not text.startswith(b"event:"):  # bare JSON lines
        bare = [ln.strip() for ln in text.replace(b"\r\n", b"\n").split(b"\n")]
        return [ln for ln in bare if ln and ln != b"[DONE]"]
    out = []
    for frame in text.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln[5:].strip() for ln in frame.split(b"\n") if ln.startswith(b"data:")]
        payload = b"\n".join(lines).strip()
        if payload and payload != b"[DONE]":
            out.append(payload)
    return out


class Translation:
    """The translations of one request to one native executor (its request and
    answer formats fixed by negotiation), with the plugins' hooks around them."""

    def __init__(self, hooks: Hooks | None, plugin: NativePlugin, info: RequestInfo) -> None:
        self.hooks = hooks
        self.plugin = plugin
        self.info = info
        self.client = info.source_format
        self.request_format = plugin.executor_format
        self.answer_format = plugin.executor_output
        self.original = b""  # the client's request (chat)
        self.translated = b""  # what the executor got
        self.reader: upstream.UpstreamToChat | None = None
        self._plugins: dict[str, list[NativePlugin]] = {}  # per capability, looked up once
        if self.answer_format != self.client and native(self.answer_format):
            self.reader = formats.stream_to_chat(self.answer_format, info.model)

    def _having(self, capability: str) -> list[NativePlugin]:
        """The plugins of a capability, in precedence order (fixed for the request, so a
        stream does not sort them again for every chunk)."""
        found = self._plugins.get(capability)
        if found is None:
            found = self.hooks.having(capability) if self.hooks is not None else []
            self._plugins[capability] = found
        return found

    async def _ask(self, plugin: NativePlugin, method: str,
                   request: dict[str, Any]) -> bytes:
        """One translate/normalize call; its `Body` (b"" when not handled)."""
        try:
            reply = await plugin.call_raw(method, request)
            return gj.data(reply, "Body") if isinstance(reply, dict) else b""
        except _FAILED as exc:
            log.warning("native plugin %s: %s failed (not handled): %s", plugin.id, method,
                        exc)
            return b""

    def _fields(self, src: str, dst: str, body: bytes, answer: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"FromFormat": src, "ToFormat": dst,
                                  "Model": self.info.model, "Stream": self.info.stream}
        if answer:
            fields["OriginalRequest"] = self.original
            fields["TranslatedRequest"] = self.translated
        fields["Body"] = body
        return fields

    async def _chain(self, capability: str, method: str, src: str, dst: str, body: bytes,
                     answer: bool) -> bytes:
        for plugin in self._having(capability):
            new = await self._ask(plugin, method, self._fields(src, dst, body, answer))
            if new:
                body = new
        return body

    async def _first(self, capability: str, method: str, src: str, dst: str, body: bytes,
                     answer: bool) -> bytes:
        for plugin in self._having(capability):
            new = await self._ask(plugin, method, self._fields(src, dst, body, answer))
            if new:
                return new
        direction = "request" if not answer else "answer"
        raise errors.GatewayError(errors.PLUGIN_NOT_IMPLEMENTED, (
            f"no translator turned this {direction} from {src} into {dst} for native "
            f"plugin {self.plugin.id}: aogstream translates {', '.join(formats.TRANSLATED)}"
            f" and no loaded plugin's {method} handled it"))

    async def request(self, chat: bytes) -> bytes:
        """The client's request in the executor's request format."""
        self.original = chat
        src, dst = self.client, self.request_format
        if src == dst:
            self.translated = chat
            return chat
        if native(dst):
            body = native_request(self.plugin, chat, dst)
            body = await self._chain("request_normalizer", "request.normalize", src, dst,
                                     body, False)
        else:
            body = await self._chain("request_normalizer", "request.normalize", src, dst,
                                     chat, False)
            body = await self._first("request_translator", "request.translate", src, dst,
                                     body, False)
        self.translated = body
        return body

    async def answer(self, payload: bytes) -> bytes:
        """The executor's unary answer in the client's format."""
        src, dst = self.answer_format, self.client
        if src == dst:
            return payload
        return await self._answer(payload, src, dst)

    async def _answer(self, body: bytes, src: str, dst: str) -> bytes:
        body = await self._chain("response_before_translator", "response.normalize_before",
                                 src, dst, body, True)
        if native(src):
            body = native_answer(self.plugin, body, src)
        else:
            body = await self._first("response_translator", "response.translate", src,
                                     dst, body, True)
        return await self._chain("response_after_translator", "response.normalize_after",
                                 src, dst, body, True)

    @property
    def streams_as_is(self) -> bool:
        """The executor's stream chunks are the client's (no translation, no hooks)."""
        return self.answer_format == self.client

    async def chunk(self, item: bytes) -> list[bytes]:
        """One chunk of the executor's stream as the client's chunks (zero or more)."""
        src, dst = self.answer_format, self.client
        body = await self._chain("response_before_translator", "response.normalize_before",
                                 src, dst, item, True)
        if self.reader is not None:
            chunks = native_chunks(self.plugin, self.reader, body)
        else:
            chunks = []
            for plugin in self._having("response_translator"):
                new = await self._ask(plugin, "response.translate",
                                      self._fields(src, dst, body, True))
                if new:
                    chunks = chat_chunks(new)
                    break
            else:  # a chunk no translator handles makes nothing the client can read
                log.debug("native plugin %s: no response.translate handled a %s chunk; "
                          "it is dropped", self.plugin.id, src)
        after = self._having("response_after_translator")
        if not after:
            return chunks
        return [await self._chain("response_after_translator", "response.normalize_after",
                                  src, dst, c, True) for c in chunks]
