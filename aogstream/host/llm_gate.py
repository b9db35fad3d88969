"""The trust gate of plugin LLM access: which overrides a plugin may use.

A plugin's `ctx.llm` call runs on the gateway's default chat route unless it asks for
a `provider`, a `model`, an `agent_id` or a `profile`; each of those is an override
the operator grants per plugin in `<data dir>/config.yaml`:

    plugins:
      entries:
        <plugin id>:
          llm:
            allow_provider_override: true
            allowed_providers: [llamacpp-plugin]    # optional allowlist
            allow_model_override: true
            allowed_models: ["*"]                   # "*" = any
            allow_agent_id_override: false
            allow_profile_override: false

Semantics (kept exactly as the design it comes from, so operators' files mean the
same thing):

* everything is off by default; a missing `plugins`, `entries`, `<id>` or `llm`
  mapping, or a file that cannot be read or parsed, means "no overrides";
* flags are true only for YAML true or a truthy string ("true", "yes", "on", "1");
  the string "false" is false;
* an allowlist that is absent or not a list means no restriction once its flag is on;
  a list keeps its strings trimmed and lowercased (other items are dropped); `"*"`
  as a whole element allows anything (there is no glob: "openai/*" is literal); an
  empty list (or one with nothing usable in it) denies every value;
* matching is literal and case-insensitive; the value passed on keeps its case
  (trimmed for provider, model and profile; agent_id as given);
* the checks run in a fixed order (provider, model, agent_id, profile) and the first
  denial wins; each denial names the exact key to set;
* grants are explicit only: nothing is inferred from other settings.

This module is pure: `policy_from_config` turns the parsed file into a
`TrustPolicy`, `check_overrides` applies it, and both are tested as a table.
The clamps on request shaping (`max_tokens`, `timeout`, sizes) are here too: they
need no grant, but the host bounds them for every plugin.
"""

from __future__ import annotations

from typing import Any

import attrs

TRUTHY = frozenset({"1", "true", "yes", "on", "y"})

# Request shaping needs no grant but is bounded for every plugin.
MAX_TOKENS_LIMIT = 4096
TIMEOUT_MIN_S = 1.0
TIMEOUT_MAX_S = 600.0
MAX_MESSAGES = 256
MAX_TEXT_BYTES = 1024 * 1024          # all text of one call together
MAX_IMAGE_BYTES = 8 * 1024 * 1024     # one image
MAX_IMAGES = 8
MAX_EMBED_INPUTS = 256
MAX_SCHEMA_BYTES = 64 * 1024


class TrustDenied(PermissionError):
    """An override the operator did not grant; `key` is the config key to set."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


@attrs.frozen
class Allowlist:
    """An allowlist as read from the file: `values` None means "no list" (anything
    passes once the flag is on); `any` means "*" was listed."""

    values: frozenset[str] | None = None
    any: bool = False

    def admits(self, value: str) -> bool:
        if self.any or self.values is None:
            return True
        return value.strip().lower() in self.values


@attrs.frozen
class TrustPolicy:
    """One plugin's grants; the default instance grants nothing."""

    allow_provider_override: bool = False
    allowed_providers: Allowlist = Allowlist()
    allow_model_override: bool = False
    allowed_models: Allowlist = Allowlist()
    allow_agent_id_override: bool = False
    allow_profile_override: bool = False
    # why this policy is the restrictive default when it is (config unreadable)
    problem: str = ""


DENY_ALL = TrustPolicy()


@attrs.frozen
class Granted:
    """The overrides that passed, None where none was asked for."""

    provider: str | None = None
    model: str | None = None
    agent_id: str | None = None
    profile: str | None = None


def is_truthy(value: Any) -> bool:
    """YAML booleans as they are; strings only when they say yes; anything else no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in TRUTHY
    if isinstance(value, int):
        return value == 1
    return False


def coerce_allowlist(value: Any) -> Allowlist:
    """Read an `allowed_*` value (see the module docstring)."""
    if not isinstance(value, list):
        return Allowlist(None, False)
    items = {v.strip().lower() for v in value if isinstance(v, str) and v.strip()}
    star = "*" in items
    items.discard("*")
    return Allowlist(frozenset(items), star)


def policy_from_config(data: dict[str, Any] | None, plugin_id: str, *,
                       problem: str = "") -> TrustPolicy:
    """The policy of `plugin_id` in the parsed config file `data`.

    `problem` (the file could not be read or parsed) or an empty `plugin_id` gives
    the restrictive default, as does any missing or non-mapping step on the path
    `plugins.entries.<plugin_id>.llm`.
    """
    if problem:
        return TrustPolicy(problem=problem)
    if not plugin_id or not isinstance(data, dict):
        return DENY_ALL
    node: Any = data
    for key in ("plugins", "entries", plugin_id, "llm"):
        if not isinstance(node, dict):
            return DENY_ALL
        node = node.get(key)
    if not isinstance(node, dict):
        return DENY_ALL
    return TrustPolicy(
        allow_provider_override=is_truthy(node.get("allow_provider_override")),
        allowed_providers=coerce_allowlist(node.get("allowed_providers")),
        allow_model_override=is_truthy(node.get("allow_model_override")),
        allowed_models=coerce_allowlist(node.get("allowed_models")),
        allow_agent_id_override=is_truthy(node.get("allow_agent_id_override")),
        allow_profile_override=is_truthy(node.get("allow_profile_override")),
    )


def config_key(plugin_id: str, name: str) -> str:
    return f"plugins.entries.{plugin_id}.llm.{name}"


def check_overrides(policy: TrustPolicy, plugin_id: str, *, provider: str | None = None,
                    model: str | None = None, agent_id: str | None = None,
                    profile: str | None = None) -> Granted:
    """The overrides that `policy` lets `plugin_id` use, or `TrustDenied` for the first
    that it does not (order: provider, model, agent_id, profile). Empty values count
    as not asked for."""
    why = f" ({policy.problem})" if policy.problem else ""

    def deny(what: str, flag: str) -> TrustDenied:
        key = config_key(plugin_id, flag)
        return TrustDenied(f"Plugin '{plugin_id}' cannot {what} (set {key} to true to "
                           f"allow){why}.", key)

    out_provider = out_model = out_agent = out_profile = None
    if provider:
        if not policy.allow_provider_override:
            raise deny("override the provider", "allow_provider_override")
        if not policy.allowed_providers.admits(provider):
            key = config_key(plugin_id, "allowed_providers")
            raise TrustDenied(f"Plugin '{plugin_id}' provider override '{provider}' is not "
                              f"in {key}.", key)
        out_provider = provider.strip()
    if model:
        if not policy.allow_model_override:
            raise deny("override the model", "allow_model_override")
        if not policy.allowed_models.admits(model):
            key = config_key(plugin_id, "allowed_models")
            raise TrustDenied(f"Plugin '{plugin_id}' model override '{model}' is not in "
                              f"{key}.", key)
        out_model = model.strip()
    if agent_id:
        if not policy.allow_agent_id_override:
            raise deny("run completions against a non-default agent id",
                       "allow_agent_id_override")
        out_agent = agent_id
    if profile:
        if not policy.allow_profile_override:
            raise deny("override the auth profile", "allow_profile_override")
        out_profile = profile.strip()
    return Granted(out_provider, out_model, out_agent, out_profile)


# ---- request shaping: no grant, but bounded ------------------------------------------------


def clamp_max_tokens(value: Any) -> int | None:
    """None stays None (the route's default); anything else is 1..MAX_TOKENS_LIMIT."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("max_tokens must be an integer")
    return max(1, min(int(value), MAX_TOKENS_LIMIT))


def clamp_timeout(value: Any, default: float) -> float:
    """Seconds, within TIMEOUT_MIN_S..TIMEOUT_MAX_S; None → `default` (clamped too)."""
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("timeout must be a number of seconds")
    return max(TIMEOUT_MIN_S, min(float(value), TIMEOUT_MAX_S))
