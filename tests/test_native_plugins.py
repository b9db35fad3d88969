"""Native plugins (CLIProxyAPI's C ABI) loaded in process by a real gateway.

Real parts: a gateway subprocess (tests/conftest.py) with its default worker processes,
a C plugin compiled by gcc from tests/native/test_plugin.c (tools/build-native-plugins.sh,
as `make test` does) and a Rust plugin built by cargo offline from tests/native/rust
(no external crates) dropped into its plugin folder under `linux/<arch>/`, enabled by
`<data dir>/config.yaml`; libraries that fail to load in each way the loader must
report; the official `openai` client and plain HTTP over loopback; a loopback HTTP
server the plugin reaches through `host.http.do`.

Proven for the Rust plugin: its model is listed beside the C plugin's, chat is served
unary and streamed (synchronous chunks) through the official `openai` client, its
`host.log` lands in the gateway log, and every answer buffer comes back to its
`free_buffer` with the length it gave (it rebuilds the `Vec` from it and counts).

Proven for the C plugin: its models are listed on `/v1/models`, `/api/tags` and AOG's model
list; chat is served unary and streamed (the synchronous `chunks` answer and the
asynchronous `host.stream.emit`/`close` from a thread of the plugin) on
`/v1/chat/completions`, `/aog/v0.2/services/chat`, `/api/chat` and the api_flavors
routes, 16 streams at once; a plugin's `http_status` (429) reaches the client and a
stream the plugin closes with an error ends with it; the plugin's config
reaches it as YAML; `host.log` lands in the gateway log with the request id;
`host.http.do` reaches a loopback server (and is cancelled when the client leaves) and
`host.http.do_stream` pulls a response in reads; `host.model.execute` and
`execute_stream` reach llama.cpp (the shipped plugin and its real engine) through the
gateway's own routing when `plugins.entries.<id>.llm` grants the model override (and
are refused, naming that key, when it does not), and a plugin's own models are
refused to it (recursion guard); a client that leaves mid-stream stops the
plugin's stream (the plugin's next emit is refused, which it records); each bad library
is listed with a clear reason and the gateway keeps serving; every answer buffer goes
back to the plugin's `free_buffer` with its own length; the gateway's stop calls the
plugin's `shutdown()`; a plugin disabled in config.yaml has its models gone after a
restart. Unit tests: the ctypes structs' layout, discovery (arch folders, versions,
IDs) and the YAML a plugin's config becomes.

The Go-compatible JSON codec (`aogstream.host.native.gojson`) has unit tests here too
(pure functions, no gateway).
"""

from __future__ import annotations

import base64
import http.server
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest import PLUGIN_DIR, REPO, Gateway, shipped_plugins_gateway
from harness import native
from harness.cloud import loopback_server

from aogstream import errors
from aogstream.host.native import gojson as gj
from aogstream.host.native.plugin import plugin_error

BUILT = native.BUILT  # the names other modules import
BAD = {  # file → what the plugin list must say about it
    "bad-abi": "plugin ABI version 2 is not supported",
    "bad-rc": "cliproxy_plugin_init returned 3",
    "bad-json": "plugin.register answered invalid JSON",
    "no-init": "missing cliproxy_plugin_init",
    "garbage": "cannot load the library",  # not a shared library at all
}


_arch = native.arch


@pytest.fixture(scope="module")
def native_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    native.build()
    loose = {f"{name}.so": (BUILT / f"{name}.so").read_bytes() for name in BAD
             if name != "garbage"}
    loose["garbage.so"] = b"not an ELF file"
    loose["not-configured.so"] = (BUILT / "c-test.so").read_bytes()
    config = ("    c-test:\n      enabled: true\n      greeting: a&b<c>\n"
              + native.enabled("rust-test", *BAD))
    with native.native_gateway(tmp_path_factory.mktemp("native"), ["c-test", "rust-test"],
                               config, loose=loose) as gw:
        yield gw


events = native.native_events


def oai(gw: Gateway, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                         timeout=timeout)


def wait_logged_with_request_id(gw: Gateway, text: str) -> None:
    """Waits (bounded) for a line of the gateway log holding `text` and a request id."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [x for x in gw.log_tail(400).splitlines() if text in x]
        if any("request_id=" in x for x in lines):
            return
        time.sleep(0.05)
    pytest.fail(f"no log line {text!r} with a request id; log:\n{gw.log_tail()}")


# ---- models ------------------------------------------------------------------------------

def test_native_models_are_listed_on_every_model_listing(native_gw: Gateway) -> None:
    ids = {m.id for m in oai(native_gw).models.list()}
    assert {"c-echo", "c-async"} <= ids
    tags = httpx.get(f"{native_gw.url}/api/tags", timeout=10).json()
    assert {"c-echo", "c-async"} <= {m["name"] for m in tags["models"]}
    aog = httpx.get(f"{native_gw.url}/aog/v0.2/model", timeout=10).json()
    rows = [r for r in aog["data"] if r["model_name"] in ("c-echo", "c-async")]
    assert {r["provider_name"] for r in rows} == {"remote_c-test_chat"}


# ---- chat ----------------------------------------------------------------------------

def test_openai_client_unary_chat_is_answered_by_the_plugin(native_gw: Gateway) -> None:
    out = oai(native_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "hello from C"
    assert out.usage is not None and out.usage.total_tokens == 4


def test_openai_client_stream_from_synchronous_chunks(native_gw: Gateway) -> None:
    stream = oai(native_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "hi"}], stream=True)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == "hello from C"


def test_openai_client_stream_from_asynchronous_emits(native_gw: Gateway) -> None:
    stream = oai(native_gw).chat.completions.create(
        model="c-async", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c for c in stream if c.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        "hello from a C thread"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_aog_route_serves_the_plugin_unary_and_streamed(native_gw: Gateway) -> None:
    r = httpx.post(native_gw.service_url("chat"), timeout=30, json={
        "model": "c-echo", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert r.status_code == 200, r.text
    assert r.headers["x-aogstream-plugin"] == "c-test"
    assert "hello from C" in r.text
    with httpx.stream("POST", native_gw.service_url("chat"), timeout=30, json={
            "model": "c-async", "messages": [{"role": "user", "content": "hi"}],
            "stream": True}) as r:
        assert r.status_code == 200
        body = r.read().decode()
    events_ = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
    assert "".join(e["message"].get("content", "") for e in events_) == "hello from a C thread"
    assert events_[-1]["finished"] is True


def test_openai_stream_ends_with_done(native_gw: Gateway) -> None:
    r = httpx.post(f"{native_gw.url}/v1/chat/completions", timeout=30, json={
        "model": "c-echo", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    datas = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
    assert datas[-1] == "[DONE]" and datas.count("[DONE]") == 1


def test_ollama_chat_door_reaches_the_plugin(native_gw: Gateway) -> None:
    r = httpx.post(f"{native_gw.url}/api/chat", timeout=30, json={
        "model": "c-echo", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert r.status_code == 200, r.text
    assert r.json()["message"]["content"] == "hello from C"


def test_api_flavors_doors_reach_the_plugin(native_gw: Gateway) -> None:
    base = f"{native_gw.url}/aog/v0.2/api_flavors"
    r = httpx.post(f"{base}/openai/v1/chat/completions", timeout=30, json={
        "model": "c-echo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "hello from C"
    r = httpx.post(f"{base}/ollama/api/chat", timeout=30, json={
        "model": "c-async", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
    assert "".join(x["message"].get("content", "") for x in lines) == "hello from a C thread"


# ---- the Rust plugin ---------------------------------------------------------------------

def test_rust_plugin_model_is_listed_beside_the_c_plugin(native_gw: Gateway) -> None:
    ids = {m.id for m in oai(native_gw).models.list()}
    assert {"rust-echo", "c-echo", "c-async"} <= ids
    tags = httpx.get(f"{native_gw.url}/api/tags", timeout=10).json()
    assert "rust-echo" in {m["name"] for m in tags["models"]}


def test_rust_plugin_serves_chat_unary_and_streamed_through_openai(native_gw: Gateway) -> None:
    client = oai(native_gw)
    out = client.chat.completions.create(
        model="rust-echo", messages=[{"role": "user", "content": "hi"}])
    assert out.choices[0].message.content == "hello from Rust"
    assert out.usage is not None and out.usage.total_tokens == 4
    stream = client.chat.completions.create(
        model="rust-echo", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c for c in stream if c.choices]
    assert [c.choices[0].delta.content or "" for c in chunks] == \
        ["hello", " from", " Rust", ""]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_rust_plugin_logs_through_host_log(native_gw: Gateway) -> None:
    oai(native_gw).chat.completions.create(
        model="rust-echo", messages=[{"role": "user", "content": "log me"}])
    wait_logged_with_request_id(native_gw, "plugin rust-test: rust-test executing")


def test_rust_plugin_gets_every_buffer_back_with_its_length(native_gw: Gateway) -> None:
    client = oai(native_gw)
    for _ in range(5):
        client.chat.completions.create(
            model="rust-echo", messages=[{"role": "user", "content": "hi"}])
    text = client.chat.completions.create(
        model="rust-echo", messages=[{"role": "user", "content": "stats"}]
    ).choices[0].message.content or ""
    stats = dict(part.split("=") for part in text.split())
    # freed through Vec::from_raw_parts(ptr, len, len): a wrong length would count as bad
    assert int(stats["freed"]) >= 3 and stats["bad"] == "0", text
    assert stats["outstanding"] == "0", text  # nothing kept back (calls are sequential)


# ---- config and host callbacks ---------------------------------------------------------

def test_config_reaches_the_plugin_as_yaml(native_gw: Gateway) -> None:
    regs = [e.split(" ", 1)[1] for e in events(native_gw) if e.startswith("register ")]
    assert regs, events(native_gw)
    yaml_text = base64.b64decode(regs[0]).decode()
    assert "greeting: a&b<c>" in yaml_text
    assert "enabled: true" in yaml_text and "priority: 0" in yaml_text


def test_host_log_reaches_the_gateway_log_with_the_request_id(native_gw: Gateway) -> None:
    oai(native_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "log me"}])
    wait_logged_with_request_id(native_gw, "plugin c-test: c-test executing")


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:  # http.server calls it by this name
        _Recorder.seen.append({"path": self.path, "x-plugin": self.headers.get("X-Plugin", "")})
        body = b"fetched through the host"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_host_http_do_reaches_a_loopback_server(native_gw: Gateway) -> None:
    with loopback_server(_Recorder) as base:
        url = f"{base}/page"
        out = oai(native_gw).chat.completions.create(
            model="c-echo", messages=[{"role": "user", "content": f"fetch {url}"}])
        assert out.choices[0].message.content == "fetched through the host"
        assert {"path": "/page", "x-plugin": "c-test"} in _Recorder.seen


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Sends a body a byte at a time for up to 20 s; records when the reader went away."""

    gone: list[float] = []

    def do_GET(self) -> None:  # http.server calls it by this name
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.02)
        except OSError:
            _Trickle.gone.append(time.monotonic())

    def log_message(self, *args: object) -> None:
        pass


def test_client_leaving_cancels_the_plugins_outbound_request(native_gw: Gateway) -> None:
    with loopback_server(_Trickle) as base:
        url = f"{base}/slow"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{native_gw.url}/v1/chat/completions", timeout=1.0, json={
                "model": "c-echo", "messages": [{"role": "user", "content": f"fetch {url}"}]})
        left = time.monotonic()
        deadline = left + 10
        while not _Trickle.gone and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _Trickle.gone, "the plugin's host.http.do kept reading after the client left"
        print(f"outbound request closed {1000 * (_Trickle.gone[0] - left):.0f} ms after "
              f"the client left")


def test_client_leaving_mid_stream_stops_the_plugin_stream(native_gw: Gateway) -> None:
    before = len([e for e in events(native_gw) if e.startswith("aborted ")])
    native.leave_mid_stream(native_gw)
    left = time.monotonic()
    deadline = left + 10
    while time.monotonic() < deadline:
        aborted = [e for e in events(native_gw) if e.startswith("aborted ")]
        if len(aborted) > before:
            # the plugin's CLOCK_MONOTONIC milliseconds, comparable with ours
            latency_ms = int(aborted[-1].split()[2]) - left * 1000
            print(f"plugin stream stopped {latency_ms:.0f} ms after the client left")
            return
        time.sleep(0.005)
    pytest.fail("the plugin kept streaming after the client left")


# ---- bad libraries -----------------------------------------------------------------------

def test_bad_libraries_are_listed_with_their_reason_and_the_gateway_serves_on(
        native_gw: Gateway) -> None:
    listing = httpx.get(f"{native_gw.url}/aog/v0.2/plugin/list", timeout=10).json()["data"]
    native = {p["name"]: p for p in listing if p.get("kind") == "native"}
    for name, reason in BAD.items():
        assert native[name]["state"] == "failed", native[name]
        assert reason in native[name]["last_error"], native[name]
        assert str(native_gw.workdir.parent) not in json.dumps(native[name])  # no paths
    assert native["c-test"]["state"] == "running"
    assert native["c-test"]["models"] == ["c-echo", "c-async"]
    assert native["not-configured"]["state"] == "disabled"
    assert "plugins.configs.not-configured.enabled" in native["not-configured"]["last_error"]
    assert any(p["name"] == "echo-plugin" for p in listing)  # process plugins still there
    assert httpx.get(f"{native_gw.url}/health", timeout=10).status_code == 200


def test_cli_plugin_list_shows_native_plugins_and_why_one_fails(native_gw: Gateway) -> None:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    env["AOG_HOST"] = native_gw.url
    out = subprocess.run([sys.executable, "-m", "aogstream", "plugin", "list"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines() if line.strip()}
    assert "running" in rows["c-test"] and "chat" in rows["c-test"]
    assert "failed" in rows["bad-abi"] and "ABI version 2" in rows["bad-abi"]


# ---- the JSON codec (unit) -----------------------------------------------------------------

def test_codec_writes_go_escapes_field_order_and_base64() -> None:
    out = gj.dumps({"URL": "https://x/?a=1&b=<2>", "Body": b"\x00\xffhi", "Stream": False,
                    "Headers": gj.header_map({"b": "2", "a": ["1"]}), "Metadata": None,
                    "N": 3, "Line": "\u2028\n\t\"\\\x01"})
    assert out == (b'{"URL":"https://x/?a=1\\u0026b=\\u003c2\\u003e","Body":"AP9oaQ==",'
                   b'"Stream":false,"Headers":{"a":["1"],"b":["2"]},"Metadata":null,'
                   b'"N":3,"Line":"\\u2028\\n\\t\\"\\\\\\u0001"}')


def test_codec_keeps_struct_order_and_sorts_maps() -> None:
    assert gj.dumps({"z": 1, "a": 2}) == b'{"z":1,"a":2}'
    assert gj.dumps(gj.GoMap({"z": 1, "a": 2})) == b'{"a":2,"z":1}'
    assert gj.dumps(gj.go_value({"z": {"y": 1, "b": [{"d": 1, "c": 2}]}})) == \
        b'{"z":{"b":[{"c":2,"d":1}],"y":1}}'
    assert gj.dumps([1.5, 2.0, "é"]) == '[1.5,2,"é"]'.encode()


def test_codec_writes_subclasses_and_escaped_keys_as_go_does_every_time() -> None:
    """The exact built-in types take a fast path and object keys are cached: a subclass
    (bool in a list, an int enum, a RawJSON and a GoMap inside a plain dict, a str
    subclass key), a key that needs escaping and a lone surrogate still come out as Go
    writes them, the second time as the first."""
    import enum

    class Level(enum.IntEnum):
        HIGH = 7

    class Name(str):
        pass

    value = {"a<b": [True, False, None, Level.HIGH, 1.0, 2.5e-7],
             Name("k&"): gj.RawJSON(b'{"x": "<y>"}'), "Go": gj.GoMap({"b": b"", "a": [{}]}),
             "bad": "x\ud800y", "ba": bytearray(b"hi"), 5: "int key"}
    expected = (b'{"a\\u003cb":[true,false,null,7,1,2.5e-7],"k\\u0026":{"x":"\\u003cy\\u003e"},'
                b'"Go":{"a":[{}],"b":""},"bad":"x\xef\xbf\xbdy","ba":"aGk=","5":"int key"}')
    assert gj.dumps(value) == expected
    assert gj.dumps(value) == expected


def test_codec_reads_replies_case_insensitively_and_ignores_unknown_keys() -> None:
    result = gj.envelope_result(b'{"OK":true,"Result":{"resources":[1],"extra":0}}')
    assert gj.field(result, "Resources") == [1]
    assert gj.data({"payload": "aGk="}, "Payload") == b"hi"
    assert gj.envelope_result(b'{"ok":true}') == {}


def test_error_envelope_carries_its_http_status() -> None:
    with pytest.raises(gj.EnvelopeError) as info:
        gj.envelope_result(b'{"ok":false,"error":{"code":"x","message":"slow down",'
                           b'"http_status":429}}')
    err = plugin_error("p", "executor.execute", info.value)
    assert err.status == 429 and "slow down" in err.message
    with pytest.raises(gj.EnvelopeError) as info:
        gj.envelope_result(b'{"ok":false,"error":{"message":"broken"}}')
    assert plugin_error("p", "m", info.value).status == errors.PLUGIN_SERVICE_ERROR.status
    with pytest.raises(gj.ReplyError):
        gj.envelope_result(b'{"ok":true,')


# ---- discovery and config (unit) ---------------------------------------------------------

def test_discovery_prefers_arch_folders_versions_and_valid_ids(tmp_path: Path) -> None:
    from aogstream.host.native import discovery

    arch = discovery.goarch()
    (tmp_path / "linux" / arch).mkdir(parents=True)
    for name in ("a.so", "b-v1.2.so", "b-v1.10.so", "b.so", "-bad.so", "c.txt", "D.SO"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "linux" / arch / "a.so").write_bytes(b"")
    found = discovery.discover([tmp_path])
    assert found["a"].path == tmp_path / "linux" / arch / "a.so"  # arch folder first
    assert found["b"].version == "1.10"  # numeric compare, versioned beats unversioned
    assert "D" in found and "-bad" not in found and "c" not in found
    assert discovery.discover([tmp_path], {"b": "v1.2"})["b"].version == "1.2"
    assert "b" not in discovery.discover([tmp_path], {"b": "9"})  # wanted version missing


def test_config_yaml_is_normalized_with_enabled_and_priority(tmp_path: Path) -> None:
    from aogstream.host.native import loader

    (tmp_path / "config.yaml").write_text(
        "plugins:\n  enabled: true\n  dir: mine\n  configs:\n"
        "    p: {enabled: true, priority: 7, key: v}\n    q: {other: 1}\n")
    cfg = loader.read_config(tmp_path)
    assert cfg.enabled and cfg.dir == tmp_path / "mine"
    assert cfg.yaml_for("p") == b"enabled: true\npriority: 7\nkey: v\n"
    assert cfg.yaml_for("q") == b"other: 1\nenabled: false\npriority: 0\n"
    assert cfg.yaml_for("absent") == b"enabled: false\npriority: 0\n"
    assert cfg.plugin_enabled("p") and not cfg.plugin_enabled("q")
    (tmp_path / "config.yaml").write_text("plugins: [not, a, mapping]\n")
    bad = loader.read_config(tmp_path)
    assert not bad.enabled and "'plugins' must be a mapping" in bad.error
    (tmp_path / "config.yaml").unlink()
    assert not loader.read_config(tmp_path).enabled  # off by default, as in CPA


# ---- many calls at once --------------------------------------------------------------------

def test_many_concurrent_streams_on_one_plugin(native_gw: Gateway) -> None:
    results: list[str] = []
    errors_: list[BaseException] = []

    def one(model: str) -> None:
        try:
            stream = oai(native_gw).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
            results.append("".join(c.choices[0].delta.content or "" for c in stream
                                   if c.choices))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors_.append(exc)

    threads = [threading.Thread(target=one, args=("c-async" if i % 2 else "c-echo",))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors_, errors_
    assert sorted(results) == ["hello from C"] * 8 + ["hello from a C thread"] * 8


class _Big(http.server.BaseHTTPRequestHandler):
    """A 100 KiB body sent in pieces, to be pulled in several reads."""

    def do_GET(self) -> None:  # http.server calls it by this name
        body = b"A" + b"x" * (100 * 1024 - 2) + b"Z"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(0, len(body), 10_000):
            self.wfile.write(body[i:i + 10_000])
            self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


def test_host_http_stream_is_pulled_in_reads_from_a_loopback_server(
        native_gw: Gateway) -> None:
    with loopback_server(_Big) as base:
        url = f"{base}/big"
        out = oai(native_gw).chat.completions.create(
            model="c-echo", messages=[{"role": "user", "content": f"fetchstream {url}"}])
        text = out.choices[0].message.content or ""
        assert text.startswith(f"streamed {100 * 1024} bytes in "), text
        assert text.endswith("A..Z"), text
        assert int(text.split(" in ")[1].split()[0]) >= 4  # 32 KiB reads at most


# ---- host.model.* (with llama.cpp) ----------------------------------------------------

LLM = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def llm_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The C plugin (found through `plugins.dir`) beside the shipped llama.cpp plugin
    and its real engine."""
    native.build()
    work = tmp_path_factory.mktemp("native-llm")
    folder = work / "data" / "native" / "linux" / _arch()
    folder.mkdir(parents=True)
    shutil.copy(BUILT / "c-test.so", folder / "c-test.so")
    (work / "data" / "config.yaml").write_text(  # plugins.dir, relative to the data dir
        "plugins:\n  enabled: true\n  dir: native\n  configs:\n"
        "    c-test:\n      enabled: true\n"
        # naming a model in host.model.* is an override the operator grants
        "  entries:\n    c-test:\n      llm:\n        allow_model_override: true\n")
    with shipped_plugins_gateway(work, ["llamacpp-plugin"], {"AOGSTREAM_WORKERS": "1",
                                                          "AOGSTREAM_UNARY_TIMEOUT": "170"}) as gw:
        yield gw


def test_host_model_execute_reaches_llamacpp_through_the_gateway(llm_gw: Gateway) -> None:
    # a generous bound: the engine loads its model on the first request, on a busy machine
    out = oai(llm_gw, timeout=180).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": f"ask {LLM}"}])
    answer = json.loads(out.choices[0].message.content or "")
    assert answer["choices"][0]["message"]["content"].strip(), answer
    assert answer["model"] == LLM


def test_host_model_execute_stream_is_pulled_by_the_plugin(llm_gw: Gateway) -> None:
    out = oai(llm_gw, timeout=180).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": f"askstream {LLM}"}])
    text = out.choices[0].message.content or ""
    datas = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    assert len(datas) > 2 and datas[-1] == "[DONE]", text
    words = "".join(json.loads(d)["choices"][0]["delta"].get("content") or ""
                    for d in datas[:-1] if json.loads(d)["choices"])
    assert words.strip(), text


def test_host_model_execute_names_a_model_only_when_the_operator_grants_it(
        native_gw: Gateway) -> None:
    """The trust gate of plugin LLM access (`host.llm_gate`): native_gw's config.yaml has
    no `plugins.entries.c-test.llm`, so a named model is refused with the key to set."""
    out = oai(native_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "ask smollm2-135m-instruct"}])
    assert out.choices[0].message.content == (
        "refused: host.model.execute: Plugin 'c-test' cannot override the model (set "
        "plugins.entries.c-test.llm.allow_model_override to true to allow).")


def test_host_model_execute_refuses_the_plugins_own_models(native_gw: Gateway) -> None:
    out = oai(native_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "ask c-async"}])
    assert out.choices[0].message.content == (
        "refused: host.model.execute: model 'c-async' is served by plugin c-test itself "
        "(a call to it would recurse)")


# ---- errors and buffers ------------------------------------------------------------------

def test_plugin_error_status_reaches_the_client(native_gw: Gateway) -> None:
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as info:
            out = oai(native_gw).chat.completions.create(
                model="c-echo", messages=[{"role": "user", "content": "fail429"}],
                stream=stream)
            list(out) if stream else None  # type: ignore[call-overload]
        assert "slow down" in str(info.value)
    r = httpx.post(native_gw.service_url("chat"), timeout=30, json={
        "model": "c-echo", "messages": [{"role": "user", "content": "fail429"}]})
    assert r.status_code == 429 and "slow down" in r.json()["message"]


def test_stream_closed_with_an_error_ends_with_that_error(native_gw: Gateway) -> None:
    r = httpx.post(f"{native_gw.url}/v1/chat/completions", timeout=30, json={
        "model": "c-async", "messages": [{"role": "user", "content": "failmid"}],
        "stream": True})
    datas = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
    assert json.loads(datas[0])["choices"][0]["delta"]["content"] == "hello"
    assert "upstream broke" in datas[-1] and "[DONE]" not in datas


def test_every_answer_buffer_is_freed_with_its_own_length(native_gw: Gateway) -> None:
    oai(native_gw).chat.completions.create(
        model="c-echo", messages=[{"role": "user", "content": "hi"}])
    assert not [e for e in events(native_gw) if e.startswith("badfree")]


def test_abi_structs_have_the_spec_layout() -> None:
    import ctypes

    from aogstream.host.native import abi

    def offsets(s: type[ctypes.Structure]) -> list[int]:
        return [getattr(s, name).offset for name, _ in s._fields_]

    assert offsets(abi.Buffer) == [0, 8] and ctypes.sizeof(abi.Buffer) == 16
    assert offsets(abi.HostApi) == [0, 8, 16, 24] and ctypes.sizeof(abi.HostApi) == 32
    assert offsets(abi.PluginApi) == [0, 8, 16, 24] and ctypes.sizeof(abi.PluginApi) == 32
    assert [n for n, _ in abi.HostApi._fields_] == ["abi_version", "host_ctx", "call",
                                                     "free_buffer"]
    assert [n for n, _ in abi.PluginApi._fields_] == ["abi_version", "call", "free_buffer",
                                                       "shutdown"]


def test_gateway_stop_calls_the_plugins_shutdown(tmp_path: Path) -> None:
    native.build()
    plugins = tmp_path / "native"
    plugins.mkdir()
    shutil.copy(BUILT / "c-test.so", plugins / "c-test.so")
    (tmp_path / "gw" / "data").mkdir(parents=True)
    (tmp_path / "gw" / "data" / "config.yaml").write_text(
        "plugins:\n  enabled: true\n  configs:\n    c-test:\n      enabled: true\n")
    log = tmp_path / "events.txt"
    gw = Gateway(tmp_path / "gw", {"NATIVE_TEST_EVENTS": str(log), "AOGSTREAM_WORKERS": "1"},
                 plugin_dir=[plugins]).start()
    try:
        assert oai(gw).chat.completions.create(
            model="c-echo", messages=[{"role": "user", "content": "hi"}]).choices
    finally:
        gw.stop()
    lines = log.read_text().splitlines()
    assert lines[0].startswith("register ") and lines[-1] == "shutdown"


def test_disabling_a_plugin_removes_its_models_after_a_restart(tmp_path: Path) -> None:
    native.build()
    plugins = tmp_path / "native"
    plugins.mkdir()
    shutil.copy(BUILT / "c-test.so", plugins / "c-test.so")
    config = tmp_path / "gw" / "data" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("plugins:\n  enabled: true\n  configs:\n    c-test:\n      enabled: true\n")
    gw = Gateway(tmp_path / "gw", {"AOGSTREAM_WORKERS": "1"}, plugin_dir=[PLUGIN_DIR, plugins])
    try:
        gw.start()
        assert "c-echo" in {m.id for m in oai(gw).models.list()}
        gw.stop()
        config.write_text("plugins:\n  enabled: true\n  configs:\n    c-test:\n"
                          "      enabled: false\n")
        gw.start()
        ids = {m.id for m in oai(gw).models.list()}
        assert "c-echo" not in ids and "c-async" not in ids
        r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30, json={
            "model": "c-echo", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 404, r.text
    finally:
        gw.stop()
