"""The `gemini` format (Gemini `generateContent`) and the chat form, both ways.

A native executor that declares only `gemini` (CPA's name for Google's
`generateContent` wire format, spec §3.1) is spoken to through these: a chat request
as a Gemini request (`contents` of `user`/`model` turns made of `parts`,
`systemInstruction`, `generationConfig`, `tools[].functionDeclarations`,
`toolConfig`), and its answer — a `GenerateContentResponse`, or the stream of them
`streamGenerateContent?alt=sse` sends, each a partial response — back as a chat answer
or chat chunks (`GeminiToChat`). The opposite directions (a Gemini request as chat, a
chat answer or chat chunks as Gemini responses) make `formats` complete for the format
and are what the round-trip tests check the upstream directions against.

Lossy where the formats differ: chat `n`, `logprobs`, `seed` and `response_format`
schemas are dropped (a JSON `response_format` becomes `responseMimeType`);
`reasoning_effort` becomes `thinkingConfig` with CLIProxyAPI's budgets per effort (and a
budget the nearest effort on the way back); Gemini has
no call ids, so a call's id is minted on the way to chat and a tool result finds its
function's name by the id of the call it answers; a Gemini thought part
(`"thought": true`) is `reasoning_content`.
"""

from __future__ import annotations

import json
from typing import Any

from aogstream.convert.chat_form import InvalidRequest, new_id
from aogstream.convert.chat_stream import ChatStreamTranslator, ToolCall
from aogstream.convert.engine import ConvertError
from aogstream.convert.upstream import Chunk, UpstreamToChat, merge_turn
from aogstream.convert.upstream import chat_answer as _chat_answer
from aogstream.convert.upstream import chat_messages as _messages
from aogstream.convert.upstream import image_url as _image_url
from aogstream.convert.upstream import json_object as _json_object
from aogstream.convert.upstream import obj as _obj
from aogstream.convert.upstream import parts as _parts
from aogstream.convert.upstream import text_of_parts as _text
from aogstream.convert.upstream import usage as _usage

FORMAT = "gemini"
# Gemini finish reasons → chat finish reasons (a call in the answer makes it tool_calls)
GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter",
                 "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
                 "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
                 "IMAGE_SAFETY": "content_filter", "LANGUAGE": "stop", "OTHER": "stop",
                 "MALFORMED_FUNCTION_CALL": "stop"}
CHAT_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY",
               "tool_calls": "STOP", "function_call": "STOP"}
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# chat `reasoning_effort` → Gemini `thinkingBudget` (0 turns thinking off, -1 lets the
# model decide), and back to the nearest effort
THINKING_BUDGETS = {"none": 0, "auto": -1, "minimal": 512, "low": 1024, "medium": 8192,
                    "high": 24576, "xhigh": 32768}


# ---- chat request → Gemini request ------------------------------------------------------


def _gemini_part(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text"):
        return {"text": str(part.get("text", ""))}
    if kind == "image_url":
        url = _image_url(part)
        if url.startswith("data:") and ";base64," in url:
            media, data = url[5:].split(";base64,", 1)
            return {"inlineData": {"mimeType": media, "data": data}}
        return {"fileData": {"mimeType": "image/*", "fileUri": url}} if url else None
    return None


def chat_to_gemini(chat: dict[str, Any]) -> dict[str, Any]:
    """A chat request as a Gemini `generateContent` request: system messages join
    `systemInstruction`, assistant turns are `model` turns (tool calls as
    `functionCall` parts), tool results `functionResponse` parts of a user turn named
    after the call they answer; consecutive turns of one role merge."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id → function name

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        merge_turn(turns, role, "parts", parts)

    for msg in _messages(chat):
        role = msg["role"]
        if role in ("system", "developer"):
            text = _text(msg.get("content"))
            if text:
                system.append(text)
        elif role == "tool":
            call_id = str(msg.get("tool_call_id") or "")
            content = _text(msg.get("content"))
            try:
                value = json.loads(content)
            except ValueError:
                value = None
            add("user", [{"functionResponse": {
                "name": names.get(call_id, str(msg.get("name") or call_id)),
                "response": value if isinstance(value, dict) else {"content": content}}}])
        elif role == "assistant":
            parts = [p for c in _parts(msg.get("content")) if (p := _gemini_part(c))]
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    name = str(fn.get("name", ""))
                    names[str(call.get("id") or "")] = name
                    parts.append({"functionCall": {"name": name,
                                                   "args": _json_object(fn.get("arguments"))}})
            add("model", parts)
        else:
            add("user", [p for c in _parts(msg.get("content")) if (p := _gemini_part(c))])
    out: dict[str, Any] = {"contents": turns}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    limit = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        config["maxOutputTokens"] = limit
    for key, name in (("temperature", "temperature"), ("top_p", "topP"),
                      ("presence_penalty", "presencePenalty"),
                      ("frequency_penalty", "frequencyPenalty")):
        if isinstance(chat.get(key), (int, float)) and not isinstance(chat.get(key), bool):
            config[name] = chat[key]
    stop = chat.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = [s for s in stop if isinstance(s, str)]
    fmt = _obj(chat.get("response_format")).get("type")
    if fmt in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    effort = chat.get("reasoning_effort")
    if isinstance(effort, str) and effort.lower() in THINKING_BUDGETS:
        budget = THINKING_BUDGETS[effort.lower()]
        config["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget != 0}
    if config:
        out["generationConfig"] = config
    tools = [t["function"] for t in chat.get("tools") or []
             if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if tools:
        out["tools"] = [{"functionDeclarations": [
            {"name": str(f.get("name", "")),
             **({"description": f["description"]} if f.get("description") else {}),
             "parameters": f.get("parameters") or {"type": "object"}} for f in tools]}]
    choice = chat.get("tool_choice")
    calling: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in TOOL_MODES:
        calling = {"mode": TOOL_MODES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        calling = {"mode": "ANY",
                   "allowedFunctionNames": [str(choice["function"].get("name", ""))]}
    if calling is not None:
        out["toolConfig"] = {"functionCallingConfig": calling}
    return out


# ---- Gemini request → chat request (the door direction) ----------------------------------


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part.get("text"), str) and not part.get("thought"):
            out.append({"type": "text", "text": part["text"]})
        elif isinstance(part.get("inlineData"), dict):
            data = part["inlineData"]
            out.append({"type": "image_url", "image_url": {
                "url": f"data:{data.get('mimeType', '')};base64,{data.get('data', '')}"}})
        elif isinstance(part.get("fileData"), dict):
            out.append({"type": "image_url",
                        "image_url": {"url": str(part["fileData"].get("fileUri", ""))}})
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def request_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A Gemini request as a chat request; a call's id is minted and its result,
    named by function, answers the oldest call of that name not yet answered."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise InvalidRequest("'contents' must be a non-empty list of turns", "contents")
    messages: list[dict[str, Any]] = []
    system = _obj(body.get("systemInstruction"))
    sys_text = "".join(str(p.get("text", "")) for p in system.get("parts") or []
                       if isinstance(p, dict))
    if sys_text:
        messages.append({"role": "system", "content": sys_text})
    open_calls: list[tuple[str, str]] = []  # (name, id) not yet answered
    for i, turn in enumerate(contents):
        if not isinstance(turn, dict) or not isinstance(turn.get("parts"), list):
            raise InvalidRequest(f"contents[{i}] must be an object with 'parts'",
                                 f"contents[{i}]")
        parts = [p for p in turn["parts"] if isinstance(p, dict)]
        if turn.get("role") == "model":
            msg: dict[str, Any] = {"role": "assistant", "content": _chat_content(parts)}
            calls = []
            for p in parts:
                if isinstance(p.get("functionCall"), dict):
                    fc = p["functionCall"]
                    call_id = str(fc.get("id") or new_id("call_"))
                    open_calls.append((str(fc.get("name", "")), call_id))
                    calls.append({"id": call_id, "type": "function", "function": {
                        "name": str(fc.get("name", "")),
                        "arguments": json.dumps(fc.get("args") or {}, ensure_ascii=False)}})
            if calls:
                msg["tool_calls"] = calls
                msg["content"] = msg["content"] or None
            messages.append(msg)
            continue
        for p in parts:
            if isinstance(p.get("functionResponse"), dict):
                fr = p["functionResponse"]
                name = str(fr.get("name", ""))
                match = next((c for c in open_calls if c[0] == name), None)
                if match is not None:
                    open_calls.remove(match)
                response = fr.get("response")
                messages.append({"role": "tool",
                                 "tool_call_id": str(fr.get("id") or (match[1] if match
                                                                      else name)),
                                 "content": json.dumps(response, ensure_ascii=False)})
        rest = [p for p in parts if "functionResponse" not in p]
        if rest:
            messages.append({"role": "user", "content": _chat_content(rest)})
    out: dict[str, Any] = {"messages": messages}
    if isinstance(body.get("model"), str):
        out["model"] = body["model"]
    config = _obj(body.get("generationConfig"))
    for name, key in (("maxOutputTokens", "max_tokens"), ("temperature", "temperature"),
                      ("topP", "top_p"), ("presencePenalty", "presence_penalty"),
                      ("frequencyPenalty", "frequency_penalty"), ("stopSequences", "stop")):
        if config.get(name) is not None:
            out[key] = config[name]
    if config.get("responseMimeType") == "application/json":
        out["response_format"] = {"type": "json_object"}
    budget = _obj(config.get("thinkingConfig")).get("thinkingBudget")
    if isinstance(budget, int) and not isinstance(budget, bool):
        out["reasoning_effort"] = "none" if budget == 0 else "auto" if budget < 0 else min(
            ("minimal", "low", "medium", "high", "xhigh"),
            key=lambda e: abs(THINKING_BUDGETS[e] - budget))
    decls = [d for t in body.get("tools") or [] if isinstance(t, dict)
             for d in t.get("functionDeclarations") or [] if isinstance(d, dict)]
    if decls:
        out["tools"] = [{"type": "function", "function": {
            "name": str(d.get("name", "")),
            **({"description": d["description"]} if d.get("description") else {}),
            "parameters": d.get("parameters") or {"type": "object"}}} for d in decls]
    calling = _obj(_obj(body.get("toolConfig")).get("functionCallingConfig"))
    mode = str(calling.get("mode") or "").upper()
    allowed = calling.get("allowedFunctionNames")
    if mode == "ANY" and isinstance(allowed, list) and len(allowed) == 1:
        out["tool_choice"] = {"type": "function", "function": {"name": str(allowed[0])}}
    elif mode:
        out["tool_choice"] = {"AUTO": "auto", "ANY": "required", "NONE": "none"}.get(
            mode, "auto")
    return out


# ---- Gemini answer → chat answer ----------------------------------------------------------


def _gemini_error(body: dict[str, Any]) -> None:
    err = body.get("error")
    if err is not None:
        message = err.get("message") if isinstance(err, dict) else err
        raise ConvertError(f"the upstream answered an error: {message}")


def _candidate(body: dict[str, Any]) -> dict[str, Any]:
    candidates = body.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return {}


def _usage_counts(body: dict[str, Any]) -> tuple[int, int] | None:
    meta = body.get("usageMetadata")
    if not isinstance(meta, dict):
        return None
    prompt = meta.get("promptTokenCount")
    out = sum(v for k in ("candidatesTokenCount", "thoughtsTokenCount")
              if isinstance(v := meta.get(k), int))
    return (prompt if isinstance(prompt, int) else 0), out


def gemini_to_chat(body: dict[str, Any]) -> dict[str, Any]:
    """A `GenerateContentResponse` as a chat answer (text joined, thought parts as
    `reasoning_content`, `functionCall` parts as tool calls)."""
    _gemini_error(body)
    if not isinstance(body.get("candidates"), list):
        feedback = _obj(body.get("promptFeedback"))
        if feedback.get("blockReason"):
            raise ConvertError(f"the upstream blocked the prompt: {feedback['blockReason']}")
        raise ConvertError("a Gemini answer needs a 'candidates' list")
    cand = _candidate(body)
    text: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in _obj(cand.get("content")).get("parts") or []:
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            (thinking if part.get("thought") else text).append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            fc = part["functionCall"]
            calls.append({"id": str(fc.get("id") or new_id("call_")), "type": "function",
                          "function": {"name": str(fc.get("name", "")),
                                       "arguments": json.dumps(fc.get("args") or {},
                                                               ensure_ascii=False)}})
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(text) if text or not calls else None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    reason = "tool_calls" if calls else \
        GEMINI_FINISH.get(str(cand.get("finishReason") or "STOP"), "stop")
    prompt, completion = _usage_counts(body) or (0, 0)
    return _chat_answer(body.get("responseId"), body.get("modelVersion"), message, reason,
                        _usage(prompt, completion))


# ---- chat answer → Gemini answer (the door direction) ------------------------------------


def _usage_metadata(prompt: int, completion: int) -> dict[str, int]:
    return {"promptTokenCount": prompt, "candidatesTokenCount": completion,
            "totalTokenCount": prompt + completion}


def response_from_chat(chat: dict[str, Any], model: str,
                       prompt_estimate: int = 0) -> dict[str, Any]:
    """A unary chat answer as a `GenerateContentResponse`."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and \
        isinstance(choices[0], dict) else {}
    msg = _obj(choice.get("message"))
    parts: list[dict[str, Any]] = []
    if isinstance(msg.get("reasoning_content"), str) and msg["reasoning_content"]:
        parts.append({"text": msg["reasoning_content"], "thought": True})
    if isinstance(msg.get("content"), str) and msg["content"]:
        parts.append({"text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        fn = _obj(_obj(call).get("function"))
        parts.append({"functionCall": {"name": str(fn.get("name", "")),
                                       "args": _json_object(fn.get("arguments"))}})
    usage = _obj(chat.get("usage"))
    given = usage.get("prompt_tokens")
    prompt = given if isinstance(given, int) else prompt_estimate
    completion = usage.get("completion_tokens")
    return {"candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": CHAT_FINISH.get(
                                str(choice.get("finish_reason") or "stop"), "STOP"),
                            "index": 0}],
            "usageMetadata": _usage_metadata(prompt, completion
                                             if isinstance(completion, int) else 0),
            "modelVersion": str(chat.get("model") or model),
            "responseId": str(chat.get("id") or new_id("resp_"))}


class GeminiStream(ChatStreamTranslator):
    """Chat chunks as the partial `GenerateContentResponse`s of a Gemini stream: a
    response per text delta, a function call whole once its arguments are complete,
    and a last one with the finish reason and `usageMetadata`."""

    def __init__(self, model: str, prompt_estimate: int = 0) -> None:
        super().__init__(prompt_estimate)
        self.model = model
        self.id = new_id("resp_")

    def _response(self, parts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        cand.update(extra.pop("candidate", {}))
        return {"candidates": [cand], **extra, "modelVersion": self.model,
                "responseId": self.id}

    def start(self) -> list[dict[str, Any]]:
        return []

    def open_text(self, out: list[Any]) -> None:
        pass

    def text_delta(self, text: str, out: list[Any]) -> None:
        out.append(self._response([{"text": text}]))

    def close_text(self, out: list[Any]) -> None:
        pass

    def open_tool(self, call: ToolCall, out: list[Any]) -> None:
        pass

    def tool_delta(self, call: ToolCall, fragment: str, out: list[Any]) -> None:
        pass

    def close_tool(self, call: ToolCall, out: list[Any]) -> None:
        out.append(self._response([{"functionCall": {
            "name": call.name, "args": _json_object("".join(call.arguments))}}]))

    def end(self, out: list[Any]) -> None:
        prompt, completion = self.counts()
        out.append(self._response(
            [], candidate={"finishReason": CHAT_FINISH.get(self.finish_reason or "stop",
                                                           "STOP")},
            usageMetadata=_usage_metadata(prompt, completion)))

    def fail(self, message: str, code: str = "server_error") -> list[Any]:
        return [{"error": {"code": 500, "message": message, "status": "INTERNAL"}}]


# ---- Gemini stream → chat chunks ----------------------------------------------------------


class GeminiToChat(UpstreamToChat):
    """The partial responses of a Gemini stream as chat chunks: text and thought
    deltas, each `functionCall` part as a whole tool call, and the finish chunk (with
    the usage) when a candidate has a `finishReason`."""

    def feed(self, event: dict[str, Any]) -> list[Chunk]:
        _gemini_error(event)
        if isinstance(event.get("modelVersion"), str) and event["modelVersion"]:
            self.model = event["modelVersion"]
        counts = _usage_counts(event)
        if counts is not None:
            self.prompt, self.completion = counts
        cand = _candidate(event)
        out: list[Chunk] = []
        for part in _obj(cand.get("content")).get("parts") or []:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") else "content"
                out += self._delta({key: part["text"]})
            elif isinstance(part.get("functionCall"), dict):
                fc = part["functionCall"]
                slot = len(self.calls)
                out += self._call_start(slot, str(fc.get("id") or new_id("call_")),
                                        str(fc.get("name", "")))
                out += self._call_args(slot, json.dumps(fc.get("args") or {},
                                                       ensure_ascii=False))
        reason = cand.get("finishReason")
        if reason:
            finish = "tool_calls" if self.calls else GEMINI_FINISH.get(str(reason), "stop")
            out.append(self.chunk({}, finish, usage=True))
        elif not out and not self.started:
            out += self._delta({"content": ""})
        return out
