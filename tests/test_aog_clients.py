"""AOG's own clients against a real gateway (subprocess, echo plugin, SQLite store), over
real HTTP on loopback: what AOG's Node SDK, C# SDK, CLI and plugin guide read and send.

Proven here:
* AOG's Node SDK's `isAOGAvailable()` test holds: `GET /health` and `GET /engine/health`
  (the two URLs in the SDK's constants.js) both answer 200, with AOG's envelope and the
  engine map (local plugins UP/DOWN, unknown names NOT_FOUND); `/engine/version` too;
* the C# SDK's `GET /aog/v0.2/services/models` lists the downloaded models;
* the control panel routes answer what they show, `set_default` changes which model a
  request without `model` gets, and an unserved one is a 404 naming the replacement;
* management timestamps are RFC 3339, which AOG's CLI (Go time.Time) and Node SDK (JSON
  schema date-time) decode; "2006-01-02 15:04:05" would break both;
* `POST /service/export` answers the `.aog` document bare;
* the plugin guide's test command (`POST /v0.2/services/chat` with the
  `{"provider", "service", "data"}` envelope) reaches the named plugin with `data`.
"""

from __future__ import annotations

import datetime
import json
import re

import httpx
import pytest
from conftest import Gateway, new_id

API = "/aog/v0.2"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
MODEL = "compat-model"


@pytest.fixture(scope="module")
def gw(gateway_factory) -> Gateway:
    """A gateway of this module's own (it sets defaults), with a cloud provider row whose
    model counts as downloaded, so there is a model to list."""
    g = gateway_factory("aog-clients")
    r = httpx.post(f"{g.url}{API}/service_provider", json={
        "service_name": "chat", "service_source": "remote", "api_flavor": "echo-plugin",
        "provider_name": "remote_compat_chat", "auth_type": "apikey",
        "auth_key": json.dumps({"api_key": "sk-compat"}), "models": [MODEL]}, timeout=30)
    assert r.status_code == 200, r.text
    return g


def test_node_sdk_availability_check_sees_a_running_gateway(gw: Gateway, client):
    # AOG's Node SDK: Promise.all([GET /health, GET /engine/health]), both must be 2xx
    health = client.get(f"{gw.url}/health")
    engine = client.get(f"{gw.url}/engine/health")
    assert health.status_code == 200 and engine.status_code == 200, (health.text, engine.text)
    body = engine.json()
    assert body["business_code"] == 80000
    assert body["data"] == {"echo-plugin": "UP"}
    asked = client.get(f"{gw.url}/engine/health",
                       params={"engine_name": "echo-plugin,ollama"}).json()["data"]
    assert asked == {"echo-plugin": "UP", "ollama": "NOT_FOUND"}
    version = client.get(f"{gw.url}/engine/version").json()
    assert version["data"] == {"echo-plugin": "0.1.0"}


def test_csharp_sdk_model_list_names_the_downloaded_models(gw: Gateway, client):
    r = client.get(f"{gw.url}{API}/services/models")
    assert r.status_code == 200, r.text
    models = r.json()["models"]
    names = {m["name"] for m in models}
    assert MODEL in names, models
    for m in models:
        assert {"name", "modified_at", "size", "digest", "details"} <= set(m)


def test_management_timestamps_are_what_aogs_clients_decode(gw: Gateway, client):
    # AOG's CLI decodes created_at/updated_at into Go time.Time (encoding/json: RFC 3339
    # only; "2006-01-02 15:04:05" fails with `cannot parse " 15:04:05" as "T"`), and AOG's
    # Node SDK validates them as ajv-formats date-time (RFC 3339 with a zone)
    for path in ("/service", "/service_provider", "/model"):
        rows = client.get(f"{gw.url}{API}{path}").json()["data"]
        assert rows, path
        for row in rows:
            for key in ("created_at", "updated_at"):
                assert RFC3339.match(row[key]), (path, key, row[key])
                stamp = datetime.datetime.fromisoformat(row[key])
                assert stamp.tzinfo is not None


def test_node_sdk_schema_fields_are_there(gw: Gateway, client):
    # getServicesSchema requires service_name, hybrid_policy, remote_provider,
    # local_provider (strings) and status (integer)
    for row in client.get(f"{gw.url}{API}/service").json()["data"]:
        assert isinstance(row["remote_provider"], str) and isinstance(row["local_provider"], str)
        assert isinstance(row["status"], int) and isinstance(row["hybrid_policy"], str)
    chat = client.get(f"{gw.url}{API}/service", params={"service_name": "chat"}).json()["data"]
    assert chat[0]["local_provider"] == "local_echo-plugin_chat"
    assert chat[0]["remote_provider"] == "remote_compat_chat"


def test_export_answers_the_document_bare(gw: Gateway, client):
    r = client.post(f"{gw.url}{API}/service/export", json={})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert "business_code" not in doc
    assert {"version", "services", "service_providers"} <= set(doc)
    assert "local_echo-plugin_chat" in doc["service_providers"]
    # an error is still AOG's error body
    bad = client.post(f"{gw.url}{API}/service/export", json={"service_name": "nope"})
    assert bad.status_code == 404 and "nope" in bad.json()["message"]


def test_control_panel_routes(gw: Gateway, client):
    about = client.get(f"{gw.url}{API}/control_panel/about")
    assert about.status_code == 200 and about.json()["data"]["version"]
    dash = client.get(f"{gw.url}{API}/control_panel/dashboard").json()["data"]
    assert dash["engines"] == {"echo-plugin": "UP"} and dash["model_count"] >= 1
    models = client.get(f"{gw.url}{API}/control_panel/modellist").json()["data"]
    echo = [m for m in models if m["model_name"] == MODEL]
    assert echo and RFC3339.match(echo[0]["updated_at"]), models
    # the removed key route: a 404 that says what to use instead
    gone = client.get(f"{gw.url}{API}/control_panel/modelkey")
    assert gone.status_code == 404 and "service_provider" in gone.json()["message"]
    # set_default: unknown model is a 404 listing the downloaded ones
    miss = client.post(f"{gw.url}{API}/control_panel/set_default",
                       json={"provider_name": "remote_compat_chat", "model_name": "nope",
                             "service_name": "chat"})
    assert miss.status_code == 404 and MODEL in miss.json()["message"], miss.text
    done = client.post(f"{gw.url}{API}/control_panel/set_default",
                       json={"provider_name": echo[0]["provider_name"], "model_name": MODEL,
                             "service_name": echo[0]["service_name"], "is_default": True})
    assert done.status_code == 200, done.text
    rows = client.get(f"{gw.url}{API}/model",
                      params={"service_name": echo[0]["service_name"]}).json()["data"]
    assert [r["model_name"] for r in rows if r["is_default"]] == [MODEL], rows


def test_plugin_guide_test_command_reaches_the_named_plugin(gw: Gateway, client):
    tag = new_id("guide")
    envelope = {"provider": "echo-plugin", "service": "generate",
                "data": {"id": tag, "prompt": "hello"}}
    r = client.post(f"{gw.url}/v0.2/services/generate", json=envelope)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": tag, "service": "generate", "echo": envelope["data"]}
    assert r.headers["x-aogstream-plugin"] == "echo-plugin"
    chat = client.post(f"{gw.url}/v0.2/services/chat", json={
        "provider": "echo-plugin", "service": "chat",
        "data": {"messages": [{"role": "user", "content": "hi"}]}})
    assert chat.status_code == 200 and chat.json()["message"]["content"], chat.text
    # a provider that does not serve it: 404 naming who can
    other = client.post(f"{gw.url}/v0.2/services/chat", json={
        "provider": "aliyun-plugin", "service": "chat", "data": {"messages": []}})
    assert other.status_code == 404 and "echo-plugin" in other.json()["message"], other.text
    # the body's service must match the path
    wrong = client.post(f"{gw.url}/v0.2/services/chat", json={
        "provider": "echo-plugin", "service": "embed", "data": {"input": "x"}})
    assert wrong.status_code == 400 and "services/embed" in wrong.json()["message"]


def test_isaogavailable_fails_when_nothing_listens():
    # the other half of the SDK's check: a closed port is an error, not a false "UP"
    try:
        httpx.get("http://127.0.0.1:9/engine/health", timeout=1.0)
    except httpx.HTTPError:
        return
    raise AssertionError("something answered on port 9")
