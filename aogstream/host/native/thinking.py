"""Thinking appliers: `thinking.identifier` / `thinking.apply` (capability
`thinking_applier`).

A thinking applier names one provider key (`thinking.identifier`, read at load; the
names of providers CPA handles itself — gemini, claude, openai, codex, antigravity,
kimi, xai — are refused, `plugin.NATIVE_PROVIDERS`) and rewrites a request body so that
provider honours the client's reasoning setting.

When it is called here (a choice: spec §9.3 says CPA never calls it on its
plugin-executor path, which would make an applier for a plugin executor's provider
dead code): on every request the gateway routes to a native executor whose provider
key (its model registration's `Provider`, else the plugin ID) equals the applier's
identifier, when the client's request carries a reasoning setting — OpenAI chat
`reasoning_effort`, Responses `reasoning.effort`, or Anthropic
`thinking` (`budget_tokens`, or `type` disabled/adaptive); a request without one is
left alone. It runs on the body in the executor's request format, after translation
(and the normalizers) and before the executor, so the applier sees what the provider
will; when formats match, on the client's body as sent. `Config` is CPA's
{`Mode`: budget/level/none/auto, `Budget`, `Level`}: an effort is `level` (its name as
`Level`), `none` and `auto` are those modes, a token budget is `budget` (-1: `auto`).

Precedence (spec §3.2): one applier per provider key, the highest priority, ties by
the lower plugin ID; others for the same key are not asked. An applier that fails or
answers an empty `Body` leaves the body as it was (logged), as CPA does.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aogstream.host.native import gojson as gj

if TYPE_CHECKING:
    from aogstream.host.native.hooks import Hooks, RequestInfo
    from aogstream.host.native.plugin import NativePlugin

log = logging.getLogger("aogstream.native")


def config_of(request: bytes) -> dict[str, Any] | None:
    """CPA's thinking `Config` for the reasoning setting a client request carries, in
    any of the formats that reach a native executor (None: it carries none)."""
    try:
        body = json.loads(request)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if not isinstance(effort, str) and isinstance(reasoning, dict):
        effort = reasoning.get("effort")
    if isinstance(effort, str) and effort.strip():
        return _config(level=effort.strip().lower())
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        kind = str(thinking.get("type") or "").lower()
        budget = thinking.get("budget_tokens")
        if kind == "disabled":
            return _config(mode="none")
        if isinstance(budget, int) and not isinstance(budget, bool):
            return _config(mode="auto") if budget < 0 else _config(budget=budget)
        if kind in ("enabled", "adaptive", "auto"):
            return _config(mode="auto")
    return None


def _config(*, mode: str = "", budget: int = 0, level: str = "") -> dict[str, Any]:
    if level in ("none", "auto"):
        mode, level = level, ""
    elif level:
        mode = "level"
    elif not mode:
        mode = "budget"
    return {"Mode": mode, "Budget": budget, "Level": level}


def model_info(model: str, provider: str) -> dict[str, Any]:
    """`pluginapi.ModelInfo` for a model name, in Go field order (what the gateway
    knows of it: its name and provider)."""
    return {"ID": model, "Object": "model", "Created": 0, "OwnedBy": provider,
            "Type": provider, "DisplayName": model, "Name": model, "Version": "",
            "Description": "", "InputTokenLimit": 0, "OutputTokenLimit": 0,
            "SupportedGenerationMethods": None, "ContextLength": 0,
            "MaxCompletionTokens": 0, "SupportedParameters": None,
            "SupportedInputModalities": None, "SupportedOutputModalities": None,
            "Thinking": None, "UserDefined": False}


def applier(hooks: Hooks, provider: str) -> NativePlugin | None:
    """The thinking applier of `provider`: the highest priority, ties by lower ID."""
    if not provider:
        return None
    return next((p for p in hooks.having("thinking_applier")
                 if p.thinking_key == provider), None)


def provider_key(plugin: NativePlugin) -> str:
    return plugin.provider_key or plugin.id.lower()


async def apply(hooks: Hooks | None, plugin: NativePlugin, info: RequestInfo,
                client_request: bytes, body: bytes) -> bytes:
    """`body` (in the executor's format) after the thinking applier of the serving
    executor's provider, when the client asked for a reasoning setting."""
    if hooks is None:
        return body
    key = provider_key(plugin)
    chosen = applier(hooks, key)
    if chosen is None:
        return body
    config = config_of(client_request)
    if config is None:
        return body
    reply = await hooks._call(chosen, "thinking.apply", {
        "Provider": key, "Model": model_info(info.model, key), "Config": config,
        "Body": body}, info.request_id)
    try:
        new = gj.data(reply, "Body") if isinstance(reply, dict) else b""
    except gj.ReplyError as exc:
        log.warning("native plugin %s: thinking.apply answered %s; the body is kept",
                    chosen.id, exc)
        return body
    return new or body
