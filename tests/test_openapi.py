"""`/openapi.json` describes the HTTP API the gateway really serves, and `/docs` shows it.

Real parts: the app `build_app` makes (its Quart URL map), the flavor templates as
files (read with yaml here, not through the code that generates the description), and
a real gateway with the echo test plugin, asked over loopback.

Proven, both ways:
- every route the app serves is described: each Quart rule with each of its methods,
  the service invocation routes, and every front door the flavor templates declare
  (bare paths where a template installs them, `/aog/v0.2/api_flavors/<flavor>/...`
  for every flavor);
- every described operation is served: asked on a real gateway, none is answered as
  a route that does not exist (Quart's "no such route" 404, a 405, or a front door's
  "not an endpoint" 404);
- `/docs` is a page whose script and style the gateway serves itself, with no address
  outside the gateway (it works offline).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from conftest import REPO, Gateway

from aogstream.config import Config
from aogstream.gateway import Gateway as Core
from aogstream.http.app import build_app

TEMPLATES = REPO / "aogstream" / "convert" / "templates"
MISSING = ("no such route", "is not an endpoint of", "has no front door here")


def described(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def test_every_route_the_app_serves_is_described(tmp_path: Path):
    from aogstream.http import agent_doors, ollama_extras, rerank_door
    from aogstream.http.openapi import spec

    core = Core(Config(data_dir=tmp_path))
    try:
        app = build_app(core)
        doc = spec(app)
        ops = described(doc)
        quart: Any = app.fallback
        served = set()
        for rule in quart.url_map.iter_rules():
            if rule.endpoint == "static":
                continue
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            served |= {(m, path) for m in rule.methods if m not in ("HEAD", "OPTIONS")}
        served |= {("POST", "/aog/v0.2/services/{service}"),
                   ("GET", "/aog/v0.2/services/{service}"),
                   ("POST", "/v0.2/services/{service}")}
        # the doors no template names (their modules say which paths they answer)
        served |= {("POST", p) for p in agent_doors.PATHS} | {("POST", rerank_door.RERANK_PATH)}
        served |= {(m, p) for p, m in ollama_extras.METHODS.items()}
        doors = 0
        for file in sorted(TEMPLATES.glob("*.yaml")):
            tpl = yaml.safe_load(file.read_text())
            for svc in (tpl.get("services") or {}).values():
                for endpoint in svc.get("endpoints") or []:
                    method, _, path = endpoint.partition(" ")
                    if method.upper() not in ("GET", "POST"):
                        continue  # WebSocket or gRPC entries have no HTTP door
                    path = path.strip().rstrip("/")
                    if not path:
                        continue  # a cloud API's root (`POST /`) is no door here
                    served.add((method.upper(), f"/aog/v0.2/api_flavors/{tpl['name']}{path}"))
                    if svc.get("install_raw_routes"):
                        served.add((method.upper(), path))
                    doors += 1
        assert doors > 30  # the templates were really read
        assert served - ops == set(), "served but not described"
        assert ("GET", "/metrics") in ops and ("GET", "/openapi.json") in ops
        assert doc["openapi"].startswith("3.")
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                assert op["summary"] and op["responses"], (method, path)
                names = set(re.findall(r"\{(\w+)\}", path))
                assert {p["name"] for p in op.get("parameters", [])} == names, (method, path)
    finally:
        core.store.close()


SAMPLES = {"service": "chat", "model": "echo", "name": "docs.js", "pid": "no-such-plugin",
           "rest": "no-such-thing"}


def test_every_described_operation_is_served(gateway_factory: Callable[..., Gateway]):
    gw = gateway_factory("openapi", AOGSTREAM_WORKERS="1")
    key = (gw.workdir / "data" / "management.key").read_text().strip()
    doc = httpx.get(f"{gw.url}/openapi.json", timeout=5).json()
    ops = sorted(described(doc))
    assert len(ops) > 60
    missing = []
    with httpx.Client(base_url=gw.url, timeout=10,
                      headers={"X-Management-Key": key}) as c:
        for method, path in ops:
            url = re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m[1]], path)
            if method == "GET":
                r = c.get(url)
            else:  # an empty object: each route answers what it lacks
                r = c.request(method, url, json={})
            if r.status_code == 405 or (r.status_code == 404 and
                                        any(s in r.text for s in MISSING)):
                missing.append(f"{method} {path}: {r.status_code} {r.text[:120]}")
    assert missing == [], "described but not served"


def test_the_docs_page_works_offline(gateway: Gateway):
    page = httpx.get(f"{gateway.url}/docs", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/docs/docs.js" in page.text and "/docs/docs.css" in page.text
    texts = [page.text]
    for name, ctype in (("docs.js", "text/javascript"), ("docs.css", "text/css")):
        r = httpx.get(f"{gateway.url}/docs/{name}", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        texts.append(r.text)
    assert "/openapi.json" in texts[1]
    for text in texts:  # nothing fetched from anywhere but the gateway
        assert not re.search(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//", text), text[:200]
        assert "http://" not in text and "https://" not in text
    r = httpx.get(f"{gateway.url}/docs/../../etc/passwd", timeout=5)
    assert r.status_code == 404
    r = httpx.get(f"{gateway.url}/docs/secret.py", timeout=5)
    assert r.status_code == 404 and "/docs" in r.json()["error"]
