"""openai-plugin: AOG's `chat` and `embed` from OpenAI-compatible cloud APIs.

OpenAI, DeepSeek, Aliyun DashScope (compatible mode) and self-hosted servers such as
llama_cpp.server all speak the same wire protocol, so one remote plugin serves them
all. This process translates between AOG's native shapes (what the gateway sends and
expects) and OpenAI's:

- chat  → `POST {base_url}/chat/completions`, answered as AOG's `{id, model,
  created_at, message: {role, content}, finished, finish_reason, usage}`; with
  `"stream": true` the cloud's SSE deltas become one AOG event each and a last event
  with `finished: true`, the finish reason and the usage when the cloud reports it;
- embed → `POST {base_url}/embeddings`, answered as `{id, model, data: [{index,
  embedding}], usage}`.

Credentials and endpoint arrive with every call in `auth_info`, the provider's
`auth_key` JSON: `{"api_key": "sk-...", "base_url": "https://api.deepseek.com/v1",
"model": "deepseek-chat"}` (`base_url` defaults to OpenAI's, `model` is the model used
when a request names none). Because nothing is kept between calls, one plugin can back
several providers (the plugin's own rows and custom rows with `api_flavor:
openai-plugin`), each with its own key. The key lives only in the call's locals; it is
never logged and never put in an error message (a cloud message that quotes it is
scrubbed). The one exception is the gateway's live check, SetAuth then ValidateAuth,
which are two RPCs: SetAuth keeps the credentials until ValidateAuth takes them, and
for PENDING_TTL seconds at most.

Errors say what happened and what to do: a refused key is UNAUTHENTICATED (the
gateway answers 401), an unreachable cloud is UNAVAILABLE naming its host (503), a
cloud that stops answering is SERVICE_TIMEOUT (504), other 4xx answers are
INVALID_ARGUMENT with the cloud's own message. Every network wait is bounded.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from aogstream import manifest as m
from aogstream.sdk import RemotePluginProvider, StreamablePlugin, serve

NAME = "openai-plugin"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODELS = {"chat": "gpt-4o-mini", "embed": "text-embedding-3-small"}
CONNECT_TIMEOUT = 5.0
UNARY_TIMEOUT = 120.0  # a whole unary answer; under the manifest's call timeouts
STREAM_GAP_TIMEOUT = 120.0  # the longest silence between two chunks of a stream
CHECK_TIMEOUT = 15.0  # ValidateAuth's GET /models
PENDING_TTL = 30.0  # how long SetAuth's credentials wait for ValidateAuth
HOW_TO_SET = ("set the provider's key with PUT /aog/v0.2/service_provider, auth_key "
              "'{\"api_key\": \"sk-...\", \"base_url\": \"https://.../v1\"}'")
# AOG chat fields OpenAI-compatible clouds accept; others (top_k, keep_alive,
# hybrid_policy...) would make OpenAI answer "unrecognized request argument".
CHAT_FIELDS = ("temperature", "top_p", "seed", "stop", "max_tokens", "max_completion_tokens",
               "presence_penalty", "frequency_penalty", "logit_bias", "tools", "tool_choice",
               "parallel_tool_calls", "response_format", "user")



@dataclass(frozen=True)
class Cloud:
    """One call's endpoint and key, built from `auth_info` and dropped with the call."""

    base_url: str
    host: str
    model: str
    api_key: str = field(repr=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def scrub(self, text: str) -> str:
        """Text from the cloud with the key blanked out, should the cloud quote it."""
        return text.replace(self.api_key, "***") if self.api_key else text


def _error(code: int, message: str) -> m.PluginError:
    return m.PluginError(code, message, "")


def parse_credentials(auth_info: str) -> dict[str, Any]:
    """The provider's auth_key as a dict; error messages never quote it."""
    if not auth_info.strip():
        raise _error(m.ERR_CODE_UNAUTHENTICATED,
                     f"the provider has no credentials for {NAME}; {HOW_TO_SET}")
    try:
        creds = json.loads(auth_info)
    except ValueError:
        creds = None
    if not isinstance(creds, dict):
        raise _error(m.ERR_CODE_UNAUTHENTICATED,
                     f"the provider's auth_key is not a JSON object; {HOW_TO_SET}")
    return creds


def cloud_from(creds: dict[str, Any]) -> Cloud:
    """Check the credentials' shape (api_key present, base_url an http(s) URL)."""
    api_key = creds.get("api_key")
    if not isinstance(api_key, str) or not api_key.strip():
        raise _error(m.ERR_CODE_UNAUTHENTICATED,
                     f"no api_key in the provider's credentials; {HOW_TO_SET}")
    base_url = creds.get("base_url") or DEFAULT_BASE_URL
    bad_url = _error(m.ERR_CODE_INVALID_ARGUMENT,
                     "base_url in the provider's auth_key must be an http(s) URL such as "
                     "https://api.deepseek.com/v1; fix it with PUT /aog/v0.2/service_provider")
    if not isinstance(base_url, str):
        raise bad_url
    try:
        url = httpx.URL(base_url.strip())
    except (httpx.InvalidURL, TypeError):
        raise bad_url from None
    if url.scheme not in ("http", "https") or not url.host:
        raise bad_url
    host = f"{url.host}:{url.port}" if url.port else url.host
    model = creds.get("model")
    return Cloud(base_url=str(url).rstrip("/"), host=host,
                 model=model if isinstance(model, str) else "", api_key=api_key.strip())


def request_json(request: bytes) -> dict[str, Any]:
    try:
        body = json.loads(request or b"{}")
    except ValueError as exc:
        raise _error(m.ERR_CODE_INVALID_ARGUMENT, f"the request is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _error(m.ERR_CODE_INVALID_ARGUMENT, "the request must be a JSON object")
    return body


def model_for(service: str, body: dict[str, Any], cloud: Cloud) -> str:
    """The request's model, else the provider's configured one, else the manifest's."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _error(m.ERR_CODE_INVALID_ARGUMENT, "'model' must be a string")
    return model or cloud.model or DEFAULT_MODELS[service]


def chat_payload(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat request from an AOG one. Messages pass through as given (tool
    calls, image parts), after a shape check that gives a clearer message than a
    cloud's validation error would."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _error(m.ERR_CODE_INVALID_ARGUMENT,
                     "chat needs 'messages': a non-empty list of {\"role\": \"user\", "
                     "\"content\": \"...\"} objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _error(m.ERR_CODE_INVALID_ARGUMENT,
                         f"'messages[{i}]' must be an object with a 'role' and a 'content'")
    payload = {"model": model, "messages": messages}
    payload.update({k: body[k] for k in CHAT_FIELDS if body.get(k) is not None})
    return payload


def embed_payload(body: dict[str, Any], model: str) -> dict[str, Any]:
    text = body.get("input")
    ok = (isinstance(text, str) and text) or (
        isinstance(text, list) and text and all(isinstance(t, str) for t in text))
    if not ok:
        raise _error(m.ERR_CODE_INVALID_ARGUMENT,
                     "embed needs 'input': a non-empty string or list of strings")
    payload: dict[str, Any] = {"model": model, "input": text, "encoding_format": "float"}
    if isinstance(body.get("dimensions"), int):
        payload["dimensions"] = body["dimensions"]
    return payload


def stamp(obj: dict[str, Any]) -> str:
    """RFC 3339 time of a cloud object's `created` (now when it has none)."""
    created = obj.get("created")
    when = time.gmtime(created) if isinstance(created, int) else time.gmtime()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", when)


def chat_event(obj: dict[str, Any], model: str, text: str, reason: str | None,
               tool_calls: Any = None) -> dict[str, Any]:
    """One AOG chat answer or stream event from a cloud answer or chunk."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    out: dict[str, Any] = {
        "id": str(obj.get("id") or f"chatcmpl-{uuid.uuid4().hex[:24]}"),
        "model": obj.get("model") if isinstance(obj.get("model"), str) else model,
        "created_at": stamp(obj),
        "message": message,
        "finished": reason is not None,
    }
    if reason is not None:
        out["finish_reason"] = reason
    return out


def usage_of(obj: dict[str, Any]) -> dict[str, int] | None:
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    return {k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens",
                                                "total_tokens") if k in usage}


def mean_vector(vectors: list[list[float]]) -> list[float]:
    """One vector from per-token ones (what llama.cpp servers answer for models
    without a pooling layer): their mean, as llama.cpp's own mean pooling does."""
    n = len(vectors)
    return [sum(col) / n for col in zip(*vectors, strict=True)]


def cloud_message(body: bytes) -> str:
    """The human part of a cloud's error answer (OpenAI's `error.message`, FastAPI's
    `detail`...), short."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return text[:300] or "no message"
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        for key in ("error", "detail", "message"):
            if obj.get(key):
                value = obj[key]
                return (value if isinstance(value, str) else json.dumps(value))[:300]
    return text[:300]


def http_error(cloud: Cloud, status: int, body: bytes, path: str) -> m.PluginError:
    where = f"the cloud at {cloud.host}"
    if status in (401, 403):
        return _error(m.ERR_CODE_UNAUTHENTICATED,
                      f"{where} refused the API key (HTTP {status}); {HOW_TO_SET}")
    detail = cloud.scrub(cloud_message(body))
    if status == 404:
        return _error(m.ERR_CODE_INVALID_ARGUMENT,
                      f"{where} answered 404 for {path}: {detail}; check the model name and "
                      f"the provider's base_url (it usually ends in /v1)")
    if status == 429:
        return _error(m.ERR_CODE_RESOURCE_EXHAUSTED,
                      f"{where} is rate-limiting this key or it is out of quota (HTTP 429): "
                      f"{detail}; retry later")
    if 400 <= status < 500:
        return _error(m.ERR_CODE_INVALID_ARGUMENT,
                      f"{where} rejected the request (HTTP {status}): {detail}")
    return _error(m.ERR_CODE_UNAVAILABLE, f"{where} failed (HTTP {status}): {detail}; "
                                          f"retry later")


def transport_error(cloud: Cloud, exc: httpx.TransportError, waited: float) -> m.PluginError:
    """A network failure as a message naming the host (and never the key)."""
    where = f"the cloud at {cloud.host}"
    if isinstance(exc, httpx.ConnectTimeout):
        return _error(m.ERR_CODE_UNAVAILABLE,
                      f"could not connect to {where} within {CONNECT_TIMEOUT:g} s; check the "
                      f"provider's base_url and the network")
    if isinstance(exc, httpx.TimeoutException):
        return _error(m.ERR_CODE_SERVICE_TIMEOUT,
                      f"{where} sent nothing for {waited:g} s; try again or ask for less")
    if isinstance(exc, httpx.ConnectError):
        return _error(m.ERR_CODE_UNAVAILABLE,
                      f"cannot reach {where} ({str(exc)[:120] or 'connection failed'}); "
                      f"check the provider's base_url and the network")
    return _error(m.ERR_CODE_UNAVAILABLE,
                  f"the connection to {where} broke ({type(exc).__name__}); retry")


def bad_answer(cloud: Cloud, path: str, what: str) -> m.PluginError:
    return _error(m.ERR_CODE_SERVICE_INVALID_RESPONSE,
                  f"the cloud at {cloud.host} answered {path} with {what}; is the provider's "
                  f"base_url an OpenAI-compatible API (usually ending in /v1)?")


class OpenAIPlugin(RemotePluginProvider, StreamablePlugin):
    """Stateless between calls, except the pooled HTTP connections."""

    def __init__(self) -> None:
        self._http: httpx.AsyncClient | None = None
        self._pending: Cloud | None = None  # SetAuth → ValidateAuth only
        self._forget: asyncio.TimerHandle | None = None

    def client(self) -> httpx.AsyncClient:
        """One pooled client for all clouds (connection reuse saves a TLS handshake
        per call). Its cookie jar refuses every cookie, so no session state from one
        provider's cloud rides along with another provider's calls."""
        if self._http is None:
            jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(UNARY_TIMEOUT, connect=CONNECT_TIMEOUT),
                cookies=jar, follow_redirects=False,
                headers={"User-Agent": f"aogstream-{NAME}/0.1"})
        return self._http

    def cloud(self, auth_info: str) -> Cloud:
        return cloud_from(parse_credentials(auth_info))

    # ---- services ----

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        self._check_service(service_name)
        body = request_json(request)
        cloud = self.cloud(auth_info)
        model = model_for(service_name, body, cloud)
        if service_name == "embed":
            answer = await self._embed(cloud, body, model)
        else:
            answer = await self._chat(cloud, body, model)
        return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()

    async def invoke_service_stream(
        self, service_name: str, auth_info: str, request: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        self._check_service(service_name)
        if service_name != "chat":
            raise _error(m.ERR_CODE_SERVICE_STREAMING_NOT_SUPPORTED,
                         f"{NAME} streams 'chat' only; call {service_name!r} without stream")
        body = request_json(request)
        cloud = self.cloud(auth_info)
        model = model_for(service_name, body, cloud)
        payload = chat_payload(body, model)
        payload.update(stream=True, stream_options={"include_usage": True})
        reason: str | None = None
        usage: dict[str, int] | None = None
        last: dict[str, Any] = {}
        async for chunk in self._sse(cloud, "/chat/completions", payload):
            last = chunk
            usage = usage_of(chunk) or usage
            choices = chunk.get("choices")
            choice = choices[0] if isinstance(choices, list) and choices and \
                isinstance(choices[0], dict) else {}  # OpenAI's usage chunk has none
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta.get("content"), str) else ""
            if text or delta.get("tool_calls"):
                yield chat_event(chunk, model, text, None, delta.get("tool_calls"))
            reason = choice.get("finish_reason") or reason
        if reason is None:
            raise _error(m.ERR_CODE_UNAVAILABLE,
                         f"the cloud at {cloud.host} ended the stream without a finish "
                         f"reason; retry")
        final = chat_event(last, model, "", reason)
        if usage:
            final["usage"] = usage
        yield final

    def _check_service(self, service_name: str) -> None:
        if service_name not in DEFAULT_MODELS:
            raise _error(m.ERR_CODE_SERVICE_NOT_FOUND,
                         f"{NAME} serves 'chat' and 'embed', not {service_name!r}")

    async def _chat(self, cloud: Cloud, body: dict[str, Any], model: str) -> dict[str, Any]:
        path = "/chat/completions"
        payload = chat_payload(body, model)
        payload["stream"] = False
        out = await self._post(cloud, path, payload)
        try:
            choice = out["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise bad_answer(cloud, path, "no choices") from None
        answer = chat_event(out, model, message.get("content") or "",
                            choice.get("finish_reason") or "stop", message.get("tool_calls"))
        usage = usage_of(out)
        if usage:
            answer["usage"] = usage
        return answer

    async def _embed(self, cloud: Cloud, body: dict[str, Any], model: str) -> dict[str, Any]:
        path = "/embeddings"
        out = await self._post(cloud, path, embed_payload(body, model))
        items = out.get("data")
        if not isinstance(items, list) or not items:
            raise bad_answer(cloud, path, "no data")
        data = []
        for i, item in enumerate(items):
            vec = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(vec, list) and vec and all(isinstance(v, list) for v in vec):
                vec = mean_vector(vec)
            if not isinstance(vec, list) or not all(isinstance(v, int | float) for v in vec):
                raise bad_answer(cloud, path, f"no float vector for input {i}")
            index = item.get("index")
            data.append({"index": index if isinstance(index, int) else i, "embedding": vec})
        data.sort(key=lambda d: d["index"])
        answer: dict[str, Any] = {
            "id": f"embd-{uuid.uuid4().hex[:24]}",
            "model": out.get("model") if isinstance(out.get("model"), str) else model,
            "object": "list", "data": data}
        usage = usage_of(out)
        if usage:
            answer["usage"] = usage
        return answer

    # ---- talking to the cloud ----

    async def _post(self, cloud: Cloud, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            r = await self.client().post(cloud.url(path), json=payload, headers=cloud.headers())
        except httpx.TransportError as exc:
            raise transport_error(cloud, exc, UNARY_TIMEOUT) from None
        if r.status_code != 200:
            raise http_error(cloud, r.status_code, r.content, path)
        try:
            out = r.json()
        except ValueError:
            out = None
        if not isinstance(out, dict):
            raise bad_answer(cloud, path, "something that is not a JSON object")
        return out

    async def _sse(self, cloud: Cloud, path: str, payload: dict[str, Any]
                   ) -> AsyncIterator[dict[str, Any]]:
        """The cloud's SSE chunks as dicts, until `[DONE]`. Leaving early (the client
        went away and the host cancelled) closes the connection, which stops the
        cloud generating."""
        timeout = httpx.Timeout(STREAM_GAP_TIMEOUT, connect=CONNECT_TIMEOUT)
        try:
            async with self.client().stream("POST", cloud.url(path), json=payload,
                                            headers=cloud.headers(), timeout=timeout) as r:
                if r.status_code != 200:
                    raise http_error(cloud, r.status_code, await r.aread(), path)
                if "json" in r.headers.get("content-type", ""):
                    # a server that ignores `stream` answers the whole completion at once
                    yield as_chunk(cloud, path, await r.aread())
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, `: keep-alive` comments, `event:` lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        item = json.loads(data)
                    except ValueError:
                        raise bad_answer(cloud, path, "an SSE event that is not JSON") from None
                    if not isinstance(item, dict):
                        continue
                    if item.get("error"):
                        raise _error(m.ERR_CODE_UNAVAILABLE,
                                     f"the cloud at {cloud.host} failed mid-stream: "
                                     f"{cloud.scrub(cloud_message(data.encode()))}")
                    yield item
        except httpx.TransportError as exc:
            raise transport_error(cloud, exc, STREAM_GAP_TIMEOUT) from None

    # ---- the gateway's live credential check ----

    async def set_auth(self, auth_type: str, credentials: dict[str, str]) -> None:
        """Check the credentials' shape and keep them for the ValidateAuth that follows."""
        if auth_type not in ("apikey", ""):
            raise _error(m.ERR_CODE_INVALID_ARGUMENT,
                         f"{NAME} takes auth_type apikey, not {auth_type!r}")
        self._clear_pending()
        self._pending = cloud_from(dict(credentials))
        self._forget = asyncio.get_running_loop().call_later(PENDING_TTL, self._clear_pending)

    async def validate_auth(self) -> None:
        """A live check: `GET {base_url}/models` with the key SetAuth gave."""
        cloud = self._pending
        self._clear_pending()
        if cloud is None:
            raise _error(m.ERR_CODE_UNAUTHENTICATED,
                         f"no credentials to check: SetAuth must come right before "
                         f"ValidateAuth (within {PENDING_TTL:g} s)")
        path = "/models"
        try:
            r = await self.client().get(cloud.url(path), headers=cloud.headers(),
                                        timeout=httpx.Timeout(CHECK_TIMEOUT,
                                                              connect=CONNECT_TIMEOUT))
        except httpx.TransportError as exc:
            raise transport_error(cloud, exc, CHECK_TIMEOUT) from None
        if r.status_code != 200:
            raise http_error(cloud, r.status_code, r.content, path)

    def _clear_pending(self) -> None:
        self._pending = None
        if self._forget is not None:
            self._forget.cancel()
            self._forget = None


def as_chunk(cloud: Cloud, path: str, body: bytes) -> dict[str, Any]:
    """A whole chat completion as if it were one stream chunk with a finish reason."""
    try:
        out = json.loads(body)
        choice = out["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise bad_answer(cloud, path, "neither SSE nor a chat completion") from None
    return {**out, "choices": [{"index": 0, "delta": message,
                                "finish_reason": choice.get("finish_reason") or "stop"}]}


if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    # httpx logs every request line at INFO: noise, and a URL is all it would add
    logging.getLogger("httpx").setLevel(logging.WARNING)
    serve(OpenAIPlugin())
