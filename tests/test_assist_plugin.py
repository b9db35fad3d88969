"""assist-plugin end to end: `summarize` and `extract` answered through ctx.llm.

Real: a gateway subprocess serving the shipped assist-plugin and llamacpp-plugin as
separate processes, SmolLM2 on llama.cpp, plain HTTP requests as the README shows
them, no config.yaml at all. Proven: a plugin with no model and no configuration
gets answers from the gateway's default chat model; `extract` gives back an object
valid against the caller's schema; bad requests are clear 400s; each call leaves an
audit line under the plugin's own name.
"""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import pytest
from conftest import REPO, Gateway, require_engines

MODEL = "smollm2-135m-instruct"
TEXT = ("The lighthouse on the northern cape was built in 1874. For a century its keepers "
        "lit the lamp every evening, until an automatic beacon replaced them in 1975. "
        "Today the tower is a small museum that opens on summer weekends.")
PERSON = {"type": "object", "properties": {"name": {"type": "string"},
                                           "city": {"type": "string"}},
          "required": ["name", "city"]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    root = require_engines(["llamacpp-plugin"])
    work = tmp_path_factory.mktemp("assist")
    plugins = work / "plugins"
    plugins.mkdir()
    for name in ("llamacpp-plugin", "assist-plugin"):
        (plugins / name).symlink_to(REPO / "plugins" / name)
    gateway = Gateway(work, {"AOGSTREAM_ENGINE_DIR": str(root)}, plugin_dir=plugins).start()
    try:
        yield gateway
    finally:
        gateway.stop()


def post(gw: Gateway, service: str, body: dict) -> httpx.Response:
    return httpx.post(gw.service_url(service), json=body, timeout=180)


def audit_for(gw: Gateway, purpose: str) -> list[dict]:
    lines = re.findall(r"plugin_llm (\{.*\})", gw.log_file.read_text(errors="replace"))
    return [a for a in map(json.loads, lines) if a["purpose"] == purpose]


def test_summarize_answers_from_the_gateway_chat_model(gw):
    r = post(gw, "summarize", {"text": TEXT, "max_tokens": 40})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["summary"] and answer["summary"] != TEXT
    assert answer["model"] == MODEL and answer["provider"] == "llamacpp-plugin"
    assert 0 < answer["usage"]["output_tokens"] <= 40
    line = audit_for(gw, "assist.summarize")[-1]
    assert line["plugin"] == "assist-plugin" and line["outcome"] == "succeeded"


def test_extract_gives_back_an_object_valid_against_the_schema(gw):
    r = post(gw, "extract", {"text": "Alice Martin lives in Lyon and works as a nurse.",
                             "schema": PERSON})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    jsonschema.validate(data, PERSON)
    line = audit_for(gw, "assist.extract")[-1]
    assert line["content_type"] == "json" and line["op"] == "complete_structured"


@pytest.mark.parametrize(("service", "body", "says"), [
    ("summarize", {}, "'text' must be a non-empty string"),
    ("summarize", {"text": "x", "max_tokens": 0}, "'max_tokens'"),
    ("extract", {"text": "x"}, "'schema' must be a JSON Schema object"),
    ("extract", {"text": "x", "schema": {"type": 5}}, "not a valid JSON Schema"),
])
def test_bad_requests_are_clear_400s(gw, service, body, says):
    r = post(gw, service, body)
    assert r.status_code == 400, r.text
    assert says in r.json()["message"]
