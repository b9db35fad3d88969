"""Shaping a plugin's LLM call: messages in, text and JSON out (pure functions).

The host, not the plugin, builds the structured prompt and judges the reply, so
every plugin gets the same strict treatment:

* `structured_messages` — a system message with the JSON-only directive (and the
  plugin's own system prompt), then one user message whose first part holds the
  instructions, the schema name and the schema, then the plugin's input blocks;
* `response_format` — what the provider is asked for (`json_schema` with the schema,
  or `json_object`); llama.cpp's server turns it into a grammar;
* `parse_structured` — the first fenced block (or the whole reply), parsed as JSON
  and **always** validated with `jsonschema`. A reply that is not JSON or does not
  match the schema comes back as `content_type: "text"` with the raw reply and the
  reason; it is never an exception, because a small model missing a schema is an
  answer the plugin should see, not a crash.

Limits from `llm_gate` bound the sizes. Errors are `ValueError`s whose messages say
what to send instead.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import jsonschema

from aogstream.host import llm_gate as g

JSON_DIRECTIVE = ("Respond with a single JSON object that matches the requested shape. "
                  "Do not include prose or markdown fences.")
SCHEMA_FORMAT_NAME = "plugin_structured_output"
ROLES = ("system", "user", "assistant", "tool")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.IGNORECASE | re.DOTALL)


class Shaped:
    """Messages ready for a route, with what routing needs to know about them."""

    def __init__(self, messages: list[dict[str, Any]], images: int, text_bytes: int) -> None:
        self.messages = messages
        self.images = images
        self.text_bytes = text_bytes


def _check_text_budget(total: int) -> None:
    if total > g.MAX_TEXT_BYTES:
        raise ValueError(f"the call's text is {total} bytes; the limit is "
                         f"{g.MAX_TEXT_BYTES} bytes (split the work into several calls)")


def _image_part(block: dict[str, Any], where: str) -> dict[str, Any]:
    """An image block (`data` base64 from the wire, or `url`) → an `image_url` part."""
    url = block.get("url")
    mime = block.get("mime_type") or "image/png"
    if not isinstance(mime, str) or "/" not in mime:
        raise ValueError(f"{where}: 'mime_type' must be a MIME type such as image/png")
    if isinstance(url, str) and url:
        if not url.startswith(("http://", "https://", "data:")):
            raise ValueError(f"{where}: 'url' must be an http(s) or data: URL")
        if len(url) > g.MAX_IMAGE_BYTES * 4 // 3 + 64:
            raise ValueError(f"{where}: the image is larger than {g.MAX_IMAGE_BYTES} bytes")
        return {"type": "image_url", "image_url": {"url": url}}
    data = block.get("data")
    if not isinstance(data, str) or not data:
        raise ValueError(f"{where}: image input block requires 'data' bytes or 'url'")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where}: image 'data' is not valid base64") from None
    if len(raw) > g.MAX_IMAGE_BYTES:
        raise ValueError(f"{where}: the image is {len(raw)} bytes; the limit is "
                         f"{g.MAX_IMAGE_BYTES}")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def chat_messages(messages: Any) -> Shaped:
    """A plugin's `complete(messages)`: OpenAI-style role/content dicts, content a
    string or a list of text/image parts."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {\"role\": ..., "
                         "\"content\": ...} objects")
    if len(messages) > g.MAX_MESSAGES:
        raise ValueError(f"{len(messages)} messages; the limit is {g.MAX_MESSAGES}")
    out: list[dict[str, Any]] = []
    images = total = 0
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise ValueError(f"{where} must be an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}")
        if isinstance(content, str):
            total += len(content.encode())
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise ValueError(f"{where}.content must be a string or a list of parts")
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                total += len(part["text"].encode())
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image":
                parts.append(_image_part(part, pwhere))
                images += 1
            elif kind == "image_url" and isinstance(part.get("image_url"), dict):
                parts.append(_image_part({"url": part["image_url"].get("url")}, pwhere))
                images += 1
            else:
                raise ValueError(f"{pwhere}: unknown content part (use text, image or "
                                 f"image_url)")
        out.append({"role": role, "content": parts})
    _check_images(images)
    _check_text_budget(total)
    return Shaped(out, images, total)


def _check_images(images: int) -> None:
    if images > g.MAX_IMAGES:
        raise ValueError(f"{images} images; the limit is {g.MAX_IMAGES} per call")


def check_schema(schema: Any) -> None:
    if not isinstance(schema, dict):
        raise ValueError("json_schema must be a JSON Schema object")
    if len(json.dumps(schema)) > g.MAX_SCHEMA_BYTES:
        raise ValueError(f"json_schema is larger than {g.MAX_SCHEMA_BYTES} bytes")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"json_schema is not a valid JSON Schema: {exc.message}") from None


def structured_messages(*, instructions: Any, inputs: Any, json_schema: Any,
                        json_mode: bool, schema_name: Any, system_prompt: Any) -> Shaped:
    """`complete_structured`'s prompt (see the module docstring)."""
    if not isinstance(instructions, str) or not instructions.strip():
        raise ValueError("complete_structured requires non-empty instructions")
    if not isinstance(inputs, list) or not inputs:
        raise ValueError("complete_structured requires at least one input block")
    if json_schema is not None:
        check_schema(json_schema)
    system_parts = []
    if isinstance(system_prompt, str) and system_prompt.strip():
        system_parts.append(system_prompt.strip())
    if json_mode or json_schema is not None:
        system_parts.append(JSON_DIRECTIVE)
    header = instructions.strip()
    if isinstance(schema_name, str) and schema_name.strip():
        header += f"\n\nSchema name: {schema_name.strip()}"
    if json_schema is not None:
        header += "\n\nJSON schema:\n" + json.dumps(json_schema, sort_keys=True,
                                                    ensure_ascii=False)
    parts: list[dict[str, Any]] = [{"type": "text", "text": header}]
    images = 0
    total = len(header.encode()) + sum(len(p.encode()) for p in system_parts)
    for i, block in enumerate(inputs):
        where = f"input[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text = block.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{where}: text input block requires 'text' string")
            total += len(text.encode())
            parts.append({"type": "text", "text": text})
        elif kind == "image":
            parts.append(_image_part(block, where))
            images += 1
        elif isinstance(block, dict):
            raise ValueError(f"{where}: Unknown input block type: {kind!r}")
        else:
            raise ValueError(f"{where}: Unsupported input block: {type(block).__name__}")
    _check_images(images)
    _check_text_budget(total)
    messages: list[dict[str, Any]] = []
    if system_parts:
        messages.append({"role": "system", "content": "\n\n".join(system_parts)})
    messages.append({"role": "user", "content": parts})
    return Shaped(messages, images, total)


def flatten_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a text-only route: text parts joined into one string per message
    (only called when there are no images)."""
    out = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            content = "\n\n".join(p["text"] for p in content if p.get("type") == "text")
        out.append({"role": msg["role"], "content": content})
    return out


def response_format(json_schema: Any, json_mode: bool) -> dict[str, Any] | None:
    if json_schema is not None:
        return {"type": "json_schema", "json_schema": {
            "name": SCHEMA_FORMAT_NAME, "schema": json_schema, "strict": False}}
    if json_mode:
        return {"type": "json_object"}
    return None


def strip_fence(text: str) -> str:
    match = _FENCE.search(text)
    return (match.group(1) if match else text).strip()


def parse_structured(text: str, json_schema: Any, json_mode: bool
                     ) -> tuple[Any, str, str]:
    """(parsed, content_type, reason): ("json" with the value) or (None, "text", why)."""
    if json_schema is None and not json_mode:
        return None, "text", ""
    if not text.strip():
        return None, "text", "the model's reply was empty"
    candidate = strip_fence(text)
    try:
        parsed = json.loads(candidate)
    except ValueError:
        return None, "text", "the model's reply is not JSON"
    if json_schema is not None:
        try:
            jsonschema.validate(parsed, json_schema)
        except jsonschema.ValidationError as exc:
            return None, "text", f"the model's reply did not match the schema: {exc.message}"
    return parsed, "json", ""
