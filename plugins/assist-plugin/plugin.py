"""assist-plugin: `summarize` and `extract`, answered by the gateway's own chat model.

This plugin has no model and no key. It asks whatever chat model the gateway serves
(the local llama.cpp model on a fresh machine) through `self.ctx.llm`, which every
plugin built with `aogstream.sdk` has:

- summarize: `{"text": "...", "max_tokens"?: N}` → `{"summary": "...", "model": ...,
  "usage": {...}}`, from `ctx.llm.acomplete`;
- extract: `{"text": "...", "schema": {JSON Schema}, "instructions"?: "..."}` →
  `{"data": <object valid against the schema>, "model": ..., "usage": {...}}`, from
  `ctx.llm.acomplete_structured`; when the model's reply does not match the schema the
  answer is an error (502) that quotes the reason and the raw reply.

No configuration is needed: the calls use no override, so the trust gate has nothing
to grant. The gateway routes them like any chat request (default model, hybrid
policy, fallback), and logs one audit line per call under this plugin's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aogstream import manifest as m
from aogstream.sdk import PluginLlmError, PluginProvider, serve

HERE = Path(__file__).resolve().parent
MAX_TEXT_CHARS = 16_000
SUMMARY_PROMPT = "Summarise the user's text in one short paragraph. No preamble."
EXTRACT_PROMPT = "Extract the requested fields from the text. Use only what the text says."


def _bad(message: str) -> m.PluginError:
    return m.PluginError(m.ERR_CODE_INVALID_ARGUMENT, message, "")


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise _bad("'text' must be a non-empty string (the text to work on)")
    if len(text) > MAX_TEXT_CHARS:
        raise _bad(f"'text' is {len(text)} characters; this plugin takes up to "
                   f"{MAX_TEXT_CHARS} (split it)")
    return text


def _max_tokens(body: dict[str, Any], default: int) -> int:
    value = body.get("max_tokens", default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad("'max_tokens' must be a positive integer")
    return value


class AssistPlugin(PluginProvider):
    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        try:
            body = json.loads(request or b"{}")
        except ValueError:
            raise _bad("the request must be a JSON object") from None
        if not isinstance(body, dict):
            raise _bad("the request must be a JSON object")
        try:
            if service_name == "summarize":
                answer = await self._summarize(body)
            elif service_name == "extract":
                answer = await self._extract(body)
            else:
                raise m.PluginError(m.ERR_CODE_SERVICE_NOT_FOUND,
                                    f"assist-plugin serves summarize and extract, not "
                                    f"{service_name!r}", "")
        except PluginLlmError as exc:  # no chat model, a timeout: say so, as a 503
            raise m.PluginError(m.ERR_CODE_UNAVAILABLE, str(exc), exc.code) from None
        return json.dumps(answer, ensure_ascii=False).encode()

    async def _summarize(self, body: dict[str, Any]) -> dict[str, Any]:
        result = await self.ctx.llm.acomplete(
            [{"role": "system", "content": SUMMARY_PROMPT},
             {"role": "user", "content": _text(body)}],
            max_tokens=_max_tokens(body, 200), temperature=0.2, purpose="assist.summarize")
        return {"summary": result.text.strip(), "model": result.model,
                "provider": result.provider, "usage": vars(result.usage)}

    async def _extract(self, body: dict[str, Any]) -> dict[str, Any]:
        schema = body.get("schema")
        if not isinstance(schema, dict):
            raise _bad("'schema' must be a JSON Schema object describing what to extract")
        instructions = body.get("instructions") or EXTRACT_PROMPT
        if not isinstance(instructions, str):
            raise _bad("'instructions' must be a string")
        result = await self.ctx.llm.acomplete_structured(
            instructions=instructions, input=[{"type": "text", "text": _text(body)}],
            json_schema=schema, schema_name=str(body.get("schema_name") or "extract"),
            temperature=0, max_tokens=_max_tokens(body, 256), purpose="assist.extract")
        if result.content_type != "json":
            raise m.PluginError(m.ERR_CODE_SERVICE_INVALID_RESPONSE,
                                f"the model's answer did not fit the schema "
                                f"({result.audit.get('reason', 'no reason given')}); "
                                f"raw answer: {result.text[:500]}", "")
        return {"data": result.parsed, "model": result.model, "provider": result.provider,
                "usage": vars(result.usage)}


if __name__ == "__main__":
    serve(AssistPlugin())
