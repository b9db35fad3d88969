"""Plugin LLM access end to end: a plugin's `ctx.llm` reaches the gateway's own models.

Real: a gateway subprocess, the llm-probe test plugin (tests/plugins-llm) and the
shipped llamacpp-plugin and embed-plugin as separate processes, llama.cpp running
SmolLM2 and the e5 embedder, the operator's `<data dir>/config.yaml` edited on disk
between calls. Each probe request makes the plugin call `ctx.llm` (over the socket
the gateway gave it) and answer with the result or the exception it got.

Proven: complete/acomplete (and the sync call made on the SDK's own event loop, which
logs a warning that it holds the loop) answer with text, usage and audit from the
default chat route; structured calls come back
parsed and valid against the schema, and as `content_type: "text"` with the raw reply
when the reply does not match; embed goes to the embed service; every row of the
trust gate holds across the process boundary (denied by default, allowed by flag,
allowlist hit and miss, "*", empty list, unreadable and unparsable config), each
denial naming its key and written to the audit log; a forged plugin id changes
nothing; a chain of plugins calling each other is stopped; image inputs without a
vision route fail saying what to configure; a request cancelled mid-call and a
plugin that dies mid-call end cleanly (the gateway cancels the call and serves the
next one).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import httpx
import jsonschema
import pytest
from conftest import REPO, Gateway, raw_http, require_engines

PROBE = "llm-probe-plugin"
MODEL = "smollm2-135m-instruct"
PING = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
SHORT = {"max_tokens": 8, "temperature": 0}
CITY_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}},
               "required": ["city"], "additionalProperties": False}
AUDIT = re.compile(r"plugin_llm (\{.*\})\s*$")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    root = require_engines(["llamacpp-plugin", "embed-plugin"])
    work = tmp_path_factory.mktemp("plugin-llm")
    plugins = work / "plugins"
    plugins.mkdir()
    for name in ("llamacpp-plugin", "embed-plugin"):
        (plugins / name).symlink_to(REPO / "plugins" / name)
    (plugins / PROBE).symlink_to(REPO / "tests" / "plugins-llm" / PROBE)
    gateway = Gateway(work, {"AOGSTREAM_ENGINE_DIR": str(root)}, plugin_dir=plugins).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def set_config(gw: Gateway, text: str | None) -> None:
    """Write the operator's config.yaml (a new file each time, so the change is seen)."""
    path = gw.workdir / "data" / "config.yaml"
    if path.is_dir():
        path.rmdir()
    if text is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(".config.yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def grant(block: str, plugin: str = PROBE) -> str:
    lines = "".join(f"        {line}\n" for line in block.strip().splitlines())
    return f"plugins:\n  configs: {{some-native: {{x: 1}}}}\n  entries:\n    {plugin}:\n" \
           f"      llm:\n{lines}"


def probe(gw: Gateway, call: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    r = httpx.post(gw.service_url("llm-probe"), json={"call": call, "args": list(args),
                                                      "kwargs": kwargs}, timeout=180)
    assert r.status_code == 200, r.text
    return r.json()


def audit_lines(gw: Gateway) -> list[dict[str, Any]]:
    out = []
    for line in gw.log_file.read_text(errors="replace").splitlines():
        m = AUDIT.search(line)
        if m:
            out.append(json.loads(m.group(1)))
    return out


def wait_audit(gw: Gateway, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for line in audit_lines(gw):
            if all(line.get(k) == v for k, v in match.items()):
                return line
        if time.monotonic() >= deadline:
            raise AssertionError(f"no audit line with {match}; log:\n{gw.log_tail()}")
        time.sleep(0.02)


def check_complete(result: dict[str, Any], purpose: str) -> None:
    assert result["text"].strip(), result
    assert result["provider"] == "llamacpp-plugin" and result["model"] == MODEL, result
    usage = result["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= SHORT["max_tokens"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["cache_read_tokens"] == 0 and usage["cache_write_tokens"] == 0
    assert result["agent_id"] == "default"
    audit = result["audit"]
    assert audit["plugin_id"] == PROBE and audit["purpose"] == purpose
    assert audit["profile"] == "" and audit["request_id"]


# ---- the four shapes ---------------------------------------------------------------------


@pytest.mark.parametrize("call", ["complete", "acomplete", "sync_in_loop"])
def test_complete_answers_from_the_default_chat_route(gw, call):
    set_config(gw, None)
    out = probe(gw, call, PING, purpose=f"test.{call}", **SHORT)
    assert out["ok"], out
    result = out["result"]["result"] if call == "sync_in_loop" else out["result"]
    check_complete(result, f"test.{call}")
    assert "Paris" in result["text"], result
    line = wait_audit(gw, request_id=result["audit"]["request_id"])
    assert line["outcome"] == "succeeded" and line["plugin"] == PROBE
    assert line["provider"] == "llamacpp-plugin" and line["model"] == MODEL
    assert line["input_tokens"] == result["usage"]["input_tokens"]
    assert line["purpose"] == f"test.{call}" and line["latency_ms"] > 0
    assert "France" not in json.dumps(line)  # never the prompt
    if call == "sync_in_loop":  # it works, and the plugin is told what it costs
        assert "was called from async code on the event loop's thread" in \
            gw.log_file.read_text(errors="replace"), gw.log_tail()


@pytest.mark.parametrize("call", ["complete_structured", "acomplete_structured"])
def test_structured_reply_is_parsed_and_valid(gw, call):
    set_config(gw, None)
    out = probe(gw, call, instructions="Which city does the text mention?",
                input=[{"type": "text", "text": "I moved to Paris last year."}],
                json_schema=CITY_SCHEMA, schema_name="city.record", purpose="test.struct",
                temperature=0, max_tokens=48)
    assert out["ok"], out
    result = out["result"]
    assert result["content_type"] == "json", result
    jsonschema.validate(result["parsed"], CITY_SCHEMA)
    assert json.loads(result["text"].strip().strip("`").removeprefix("json")) == \
        result["parsed"]
    assert result["audit"]["schema_name"] == "city.record"
    line = wait_audit(gw, request_id=result["audit"]["request_id"])
    assert line["content_type"] == "json" and line["op"] == "complete_structured"


def test_structured_reply_that_misses_the_schema_comes_back_as_text(gw):
    set_config(gw, None)
    # the grammar follows `properties`; the `not` makes every such object invalid, so
    # the host's validation, not the model, decides
    impossible = {**CITY_SCHEMA, "not": {"required": ["city"]}}
    out = probe(gw, "acomplete_structured", instructions="Which city is mentioned?",
                input=[{"type": "text", "text": "Rome is lovely."}], json_schema=impossible,
                temperature=0, max_tokens=48)
    assert out["ok"], out
    result = out["result"]
    assert result["content_type"] == "text" and result["parsed"] is None
    assert result["text"].strip().startswith("{")  # the raw reply, untouched
    assert "did not match the schema" in result["audit"]["reason"]


def test_bad_structured_input_is_a_value_error(gw):
    out = probe(gw, "acomplete_structured", instructions="  ", input=[{"type": "text",
                                                                        "text": "x"}])
    assert out["error_type"] == "ValueError" and "instructions" in out["message"]
    out = probe(gw, "acomplete_structured", instructions="x",
                input=[{"type": "audio", "data": "x"}])
    assert out["error_type"] == "ValueError" and "Unknown input block" in out["message"]
    out = probe(gw, "acomplete_structured", instructions="x",
                input=[{"type": "text", "text": "y"}], json_schema={"type": "nonsense"})
    assert out["error_type"] == "ValueError" and "JSON Schema" in out["message"]


def test_images_without_a_vision_route_say_what_to_configure(gw):
    png = {"type": "image", "url": "data:image/png;base64,iVBORw0KGgo="}
    out = probe(gw, "acomplete_structured", instructions="Describe it.",
                input=[{"type": "text", "text": "a picture"}, png])
    assert out["error_type"] == "PluginLlmError" and out["code"] == "no_route", out
    assert "vision" in out["message"] and "install or enable" in out["message"]


def test_embed_goes_through_the_embed_service(gw):
    set_config(gw, None)
    out = probe(gw, "aembed", ["hello world", "bonjour le monde"], purpose="test.embed")
    assert out["ok"], out
    result = out["result"]
    assert result["provider"] == "embed-plugin" and len(result["vectors"]) == 2
    assert all(len(v) == 384 for v in result["vectors"])
    assert result["audit"]["plugin_id"] == PROBE
    wait_audit(gw, request_id=result["audit"]["request_id"], op="embed")
    out = probe(gw, "embed", ["x"], model="multilingual-e5-small")
    assert out["is_trust_error"], out


# ---- the gate across the process boundary -------------------------------------------------


GATE_ROWS = [
    # (name, config, overrides, None when allowed / the key named by the denial)
    ("model denied by default", None, {"model": MODEL}, "allow_model_override"),
    ("provider denied by default", None, {"provider": "llamacpp-plugin"},
     "allow_provider_override"),
    ("agent id denied by default", None, {"agent_id": "other"}, "allow_agent_id_override"),
    ("profile denied by default", None, {"profile": "work"}, "allow_profile_override"),
    ("model allowed by flag", grant("allow_model_override: true"), {"model": MODEL}, None),
    ("agent id allowed by flag", grant("allow_agent_id_override: true"),
     {"agent_id": "helper"}, None),
    ("profile allowed by flag", grant("allow_profile_override: true"), {"profile": "work"},
     None),
    ("model allowlist hit", grant("allow_model_override: true\n"
                                  "allowed_models: [SmolLM2-135M-Instruct]"),
     {"model": MODEL}, None),
    ("model allowlist miss", grant("allow_model_override: true\nallowed_models: [other]"),
     {"model": MODEL}, "allowed_models"),
    ("star allows any provider", grant("allow_provider_override: true\n"
                                       "allowed_providers: ['*']"),
     {"provider": "llamacpp-plugin"}, None),
    ("empty list denies every provider", grant("allow_provider_override: true\n"
                                               "allowed_providers: []"),
     {"provider": "llamacpp-plugin"}, "allowed_providers"),
    ("another plugin's grant is not ours", grant("allow_model_override: true",
                                                 plugin="llamacpp-plugin"),
     {"model": MODEL}, "allow_model_override"),
    ("unparsable config denies", grant("allow_model_override: true") + "  : [oops\n",
     {"model": MODEL}, "allow_model_override"),
]


@pytest.mark.parametrize(("config", "overrides", "denied_key"),
                         [r[1:] for r in GATE_ROWS], ids=[r[0] for r in GATE_ROWS])
def test_gate_row_across_the_process_boundary(gw, config, overrides, denied_key):
    set_config(gw, config)
    purpose = f"gate.{time.monotonic_ns()}"
    out = probe(gw, "acomplete", PING, purpose=purpose, **overrides, **SHORT)
    if denied_key is None:
        assert out["ok"], out
        result = out["result"]
        assert result["text"].strip()
        if "agent_id" in overrides:
            assert result["agent_id"] == overrides["agent_id"]
        if "profile" in overrides:
            assert result["audit"]["profile"] == overrides["profile"]
        if "provider" in overrides:
            assert result["provider"] == overrides["provider"]
        assert wait_audit(gw, purpose=purpose)["outcome"] == "succeeded"
        return
    key = f"plugins.entries.{PROBE}.llm.{denied_key}"
    assert out["error_type"] == "PluginLlmTrustError" and out["is_permission_error"], out
    assert out["key"] == key and key in out["message"]
    line = wait_audit(gw, purpose=purpose)
    assert line["outcome"] == "denied" and line["code"] == "trust_denied"
    assert line["plugin"] == PROBE


def test_unreadable_config_denies_and_a_fixed_file_grants_again(gw):
    set_config(gw, grant("allow_model_override: true"))
    assert probe(gw, "acomplete", PING, model=MODEL, **SHORT)["ok"]
    path = gw.workdir / "data" / "config.yaml"
    path.unlink()
    path.mkdir()  # unreadable as a file, whoever runs the gateway
    out = probe(gw, "acomplete", PING, model=MODEL, **SHORT)
    assert out["error_type"] == "PluginLlmTrustError", out
    assert "cannot read config.yaml" in out["message"]
    assert str(gw.workdir) not in out["message"]
    set_config(gw, grant("allow_model_override: true"))
    assert probe(gw, "acomplete", PING, model=MODEL, **SHORT)["ok"]


def test_the_plugin_socket_is_private(gw):
    info = probe(gw, "socket_info")["result"]
    assert info == {"socket_mode": 0o600, "folder_mode": 0o700}, info


def test_a_forged_plugin_id_is_ignored(gw):
    # the operator trusts llamacpp-plugin, not the probe; the probe claims to be it
    set_config(gw, grant("allow_model_override: true", plugin="llamacpp-plugin"))
    forged = {"op": "complete", "plugin_id": "llamacpp-plugin",
              "args": {"plugin_id": "llamacpp-plugin", "messages": PING, "model": MODEL,
                       "max_tokens": 4}}
    out = probe(gw, "raw", frame=forged)["result"]
    assert out["ok"] is False and out["error"]["code"] == "trust_denied", out
    assert out["error"]["key"] == f"plugins.entries.{PROBE}.llm.allow_model_override"
    forged["args"].pop("model")
    out = probe(gw, "raw", frame=forged)["result"]
    assert out["ok"] is True and out["result"]["audit"]["plugin_id"] == PROBE, out


# ---- ending cleanly, and loops (chat served by the loop-* plugins) -----------------------


@pytest.fixture(scope="module")
def loop_gw(tmp_path_factory: pytest.TempPathFactory):
    """The probe, and two plugins that serve `chat` by calling ctx.llm themselves (or
    by sleeping, when asked to): no engine involved."""
    work = tmp_path_factory.mktemp("plugin-llm-loop")
    plugins = work / "plugins"
    plugins.mkdir()
    for name in ("loop-a-plugin", "loop-b-plugin"):
        (plugins / name).symlink_to(REPO / "tests" / "plugins-llm-loop" / name)
    (plugins / PROBE).symlink_to(REPO / "tests" / "plugins-llm" / PROBE)
    gateway = Gateway(work, plugin_dir=plugins).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_cancelled_request_cancels_its_llm_call_down_the_chain(loop_gw):
    tag = f"cancel-{time.monotonic_ns()}"
    body = json.dumps({"call": "acomplete", "id": tag,
                       "args": [[{"role": "user", "content": f"sleep:{tag}"}]],
                       "kwargs": {"purpose": tag}}).encode()
    sock = raw_http(loop_gw.port, "POST", "/aog/v0.2/services/llm-probe", body)
    try:
        # the call is in flight: the plugin serving its chat has started
        sleeping = loop_gw.wait_event("chat_sleeping", timeout=30, id=tag)
        assert sleeping, loop_gw.log_tail()
    finally:
        sock.close()  # the client goes away mid-call
    assert loop_gw.wait_event("llm_cancelled", timeout=10, id=tag), loop_gw.log_tail()
    assert loop_gw.wait_event("chat_cancelled", timeout=10, id=tag,
                              plugin=sleeping["plugin"]), loop_gw.log_tail()
    line = wait_audit(loop_gw, purpose=tag)
    assert line["code"] == "cancelled" and line["outcome"] == "failed"
    assert line["plugin"] == PROBE


def test_a_plugin_that_dies_mid_call_ends_cleanly_and_calls_again(loop_gw):
    before = loop_gw.plugin(PROBE)["pid"]
    tag = f"crash-{time.monotonic_ns()}"
    r = httpx.post(loop_gw.service_url("llm-probe"), timeout=60, json={
        "call": "crash", "kwargs": {"messages": [{"role": "user", "content": f"sleep:{tag}"}],
                                    "purpose": tag}})
    assert r.status_code >= 500 and "exited" in r.json()["message"], r.text
    line = wait_audit(loop_gw, purpose=tag)
    assert line["code"] == "cancelled" and line["plugin"] == PROBE
    loop_gw.wait_plugin_running(not_pid=before, name=PROBE, timeout=30)
    # the restarted process has its socket again: a call goes through the chain
    out = probe(loop_gw, "acomplete", [{"role": "user", "content": "hi"}], purpose="again")
    assert out["ok"], out
    assert out["result"]["provider"] in ("loop-a-plugin", "loop-b-plugin")


def test_a_chain_of_plugins_never_reenters_itself(loop_gw):
    """Both loop plugins serve `chat` by calling ctx.llm: a chat reaches one, its call
    reaches the other (never itself), whose call finds no provider outside the chain
    and is stopped with a clear error, which comes back up the chain."""
    r = httpx.post(loop_gw.service_url("chat"), timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    text = r.json()["message"]["content"]
    assert "PluginLlmError" in text and "never re-enters" in text, text
    first = r.json()["model"]  # the loop plugin the chat reached
    lines = [ln for ln in audit_lines(loop_gw) if ln["purpose"] == "loop.chat"]
    assert [ln["code"] for ln in lines[-2:]] == ["recursion", ""], lines
    inner, outer = lines[-2:]
    assert outer["plugin"] == first and outer["provider"] == inner["plugin"] != first
