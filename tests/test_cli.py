"""The `aogstream` CLI end to end: every command runs as a real subprocess
(`python -m aogstream ...`) against a real gateway subprocess, with its real SQLite file.

The first tests need no engines (the echo test plugin): the detached server's start and
stop, the not-running and bad-argument errors, services, hybrid policy, providers
(whose key is never printed), export/import into a fresh gateway, and plugin control.
The last ones run the shipped plugins with their real engines: chat streamed to the
terminal, a model pull with progress, and speech to text from a file and in realtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from audio import goforward_pcm
from conftest import REPO, Gateway, free_port, require_engines

from aogstream.cli.server import pid_alive

CLI_TIMEOUT = 60.0
SECRET = "sk-cli-secret-4242"


def cli(*args: str, url: str | None = None, env: dict[str, str] | None = None,
        stdin: str | None = None, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    """Run `python -m aogstream <args>` and return the finished process (text output)."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("AOGSTREAM_", "AOG_"))}
    full_env["PYTHONUNBUFFERED"] = "1"
    if url is not None:
        full_env["AOG_HOST"] = url
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "aogstream", *args], cwd=REPO, env=full_env,
                          input=stdin, capture_output=True, text=True, timeout=timeout,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr}")
    return proc.stdout


def rows(table: str) -> dict[str, list[str]]:
    """An aligned table as {first column: cells}, header row left out."""
    lines = [ln for ln in table.splitlines() if ln.strip()]
    return {ln.split()[0]: ln.split() for ln in lines[1:]}


@pytest.fixture(scope="module")
def gw(gateway_factory) -> Gateway:
    return gateway_factory("cli")


# ---- the server: detached start, stop, not running --------------------------------------


def test_server_start_detached_and_stop(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    env = {"AOG_DATA_DIR": str(data)}
    url = f"127.0.0.1:{port}"
    pid_file = data / "aogstream.pid"
    pid = None
    try:
        out = ok(cli("server", "start", "-d", "--port", str(port), "--plugin-dir",
                     str(REPO / "tests" / "plugins"), env=env, timeout=200))
        assert f"http://127.0.0.1:{port}" in out, out
        pid = int(pid_file.read_text())
        assert pid_alive(pid)
        assert (data / "logs" / "server.log").exists()
        # it answers, serves the plugin, and a second start does not start another
        plugins = rows(ok(cli("plugin", "list", url=url)))
        assert plugins["echo-plugin"][1] == "running", plugins
        assert "already running" in ok(cli("server", "start", "-d", "--port", str(port),
                                           env=env))
        version = ok(cli("version", url=url))
        assert "server: aogstream" in version and f"127.0.0.1:{port}" in version, version

        out = ok(cli("server", "stop", env=env, timeout=90))
        assert f"stopped (pid {pid})" in out, out
        assert not pid_alive(pid), "the server process is still alive after `server stop`"
        assert not pid_file.exists()
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{url}/health", timeout=2.0)
        assert "not running" in ok(cli("server", "stop", env=env))
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_not_running_says_how_to_start():
    url = f"127.0.0.1:{free_port()}"
    for args in (["get", "services"], ["plugin", "list"], ["chat", "hi"]):
        proc = cli(*args, url=url)
        assert proc.returncode == 1, (args, proc)
        assert proc.stderr.strip() == (f"aogstream is not running at http://{url}; start it "
                                       "with `aogstream server start -d`"), proc.stderr
    # a version check still works without a server
    assert f"not running at http://{url}" in ok(cli("version", url=url))


def test_bad_arguments_name_the_argument(gw):
    proc = cli("edit", "service", "chat", "--hybrid-policy", "sometimes", url=gw.url)
    assert proc.returncode == 2 and "--hybrid-policy" in proc.stderr, proc.stderr
    proc = cli("pull", "some-model", url=gw.url)
    assert proc.returncode == 2 and "--for" in proc.stderr, proc.stderr
    proc = cli("transcribe", url=gw.url)
    assert proc.returncode == 2 and "audio file" in proc.stderr, proc.stderr


# ---- services, providers, export/import ---------------------------------------------------


def test_get_services_and_edit_hybrid_policy(gw):
    services = rows(ok(cli("get", "services", url=gw.url)))
    assert {"chat", "embed", "speech-to-text"} <= set(services), services
    assert services["chat"][1] == "default"

    out = ok(cli("edit", "service", "chat", "--hybrid-policy", "always_local", url=gw.url))
    assert "always_local" in out
    one = rows(ok(cli("get", "services", "chat", url=gw.url)))
    assert list(one) == ["chat"] and one["chat"][1] == "always_local", one
    ok(cli("edit", "service", "chat", "--hybrid_policy", "default", url=gw.url))
    assert rows(ok(cli("get", "services", "chat", url=gw.url)))["chat"][1] == "default"

    proc = cli("edit", "service", "no-such-service", "--hybrid-policy", "default", url=gw.url)
    assert proc.returncode == 1 and "no-such-service" in proc.stderr, proc.stderr


def provider_file(tmp_path: Path, name: str, **fields) -> Path:
    body = {"provider_name": name, "service_name": "chat", "service_source": "remote",
            "api_flavor": "echo-plugin", "desc": "a provider made by the CLI test",
            "method": "POST", "url": "https://api.example.invalid/v1/chat",
            "auth_type": "apikey", "auth_key": {"api_key": SECRET}, "models": ["cli-model"]}
    body.update(fields)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(body))
    return path


def test_provider_file_lifecycle_never_prints_the_key(gw, tmp_path):
    name = "remote_cli_chat"
    ok(cli("install", "service_provider", "-f", str(provider_file(tmp_path, name)),
           url=gw.url))
    listed = ok(cli("get", "service_providers", "-s", "chat", url=gw.url))
    assert name in rows(listed), listed
    assert rows(listed)[name][5] == "set", listed  # the KEY column says only that it is set
    assert SECRET not in listed
    as_json = ok(cli("get", "service_providers", "-p", name, "--json", url=gw.url))
    assert SECRET not in as_json and "auth_key" not in json.loads(as_json)[0]
    assert name not in rows(ok(cli("get", "service_providers", "-r", "local", url=gw.url)))

    edit = tmp_path / "edit.json"
    edit.write_text(json.dumps({"desc": "changed by edit"}))
    ok(cli("edit", "provider", name, "-f", str(edit), url=gw.url))
    detail = json.loads(ok(cli("get", "service_providers", "-p", name, "--json", url=gw.url)))
    assert detail[0]["desc"] == "changed by edit"
    assert detail[0].get("has_auth_key", True), "editing without a key must keep the key"

    ok(cli("delete", "service_provider", name, url=gw.url))
    assert name not in rows(ok(cli("get", "service_providers", url=gw.url)))
    proc = cli("delete", "service_provider", name, url=gw.url)
    assert proc.returncode == 1 and name in proc.stderr, proc.stderr


def test_export_to_file_and_import_into_a_fresh_gateway(gw, gateway_factory, tmp_path):
    name = "remote_cli_export_chat"
    ok(cli("install", "service_provider", "-f", str(provider_file(tmp_path, name)),
           url=gw.url))
    ok(cli("edit", "service", "embed", "--hybrid-policy", "always_remote", url=gw.url))
    try:
        target = tmp_path / "setup.aog"
        ok(cli("export", "-f", str(target), url=gw.url))
        exported = target.read_text()
        assert SECRET not in exported
        doc = json.loads(exported)
        assert name in doc["service_providers"], doc
        assert doc["services"]["embed"]["hybrid_policy"] == "always_remote"
        stdout_doc = json.loads(ok(cli("export", "--provider", name, url=gw.url)))
        assert list(stdout_doc["service_providers"]) == [name], stdout_doc

        fresh = gateway_factory("cli-fresh")
        assert name not in rows(ok(cli("get", "service_providers", url=fresh.url)))
        ok(cli("import", str(target), url=fresh.url))
        assert name in rows(ok(cli("get", "service_providers", url=fresh.url)))
        assert rows(ok(cli("get", "services", "embed", url=fresh.url)))["embed"][1] == \
            "always_remote"
    finally:
        cli("delete", "service_provider", name, url=gw.url)
        cli("edit", "service", "embed", "--hybrid-policy", "default", url=gw.url)


def test_install_remote_with_bad_credentials_leaves_nothing(gw):
    """A remote install whose provider fails the live credential check is refused with
    the gateway's message naming the provider, and the provider it created is gone."""
    proc = cli("install", "chat", "--remote", "--flavor", "no-such-cloud",
               "--auth-key", json.dumps({"api_key": SECRET}), url=gw.url)
    assert proc.returncode == 1, proc
    assert "remote_no-such-cloud_chat" in proc.stderr or "no-such-cloud" in proc.stderr, \
        proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert "remote_no-such-cloud_chat" not in rows(ok(cli("get", "service_providers",
                                                          url=gw.url)))


CLOUD_PY = """
import json
from aogstream.sdk import PluginError, RemotePluginProvider, serve
from aogstream.sdk.provider import parse_auth_info


class Cloud(RemotePluginProvider):
    creds = {}

    async def set_auth(self, auth_type, credentials):
        self.creds = dict(credentials)

    async def validate_auth(self):
        if self.creds.get("api_key") != "good-key":
            raise PluginError(14, "the cloud says: invalid api_key")

    async def invoke_service(self, service_name, auth_info, request):
        good = parse_auth_info(auth_info).get("api_key") == "good-key"
        text = "cloud answer, key accepted" if good else "cloud answer, key refused"
        return json.dumps({"message": {"role": "assistant", "content": text},
                           "finished": True}).encode()


if __name__ == "__main__":
    serve(Cloud())
"""


def cloud_plugin(parent: Path, name: str) -> Path:
    """A tiny remote plugin whose live check accepts only api_key "good-key"."""
    d = parent / name
    (d / "bin").mkdir(parents=True)
    (d / "plugin.py").write_text(CLOUD_PY)
    platforms = "".join(f"  {p}: {{executable: bin/run}}\n" for p in (
        "linux_amd64", "linux_arm64", "darwin_amd64", "darwin_arm64"))
    (d / "plugin.yaml").write_text(
        'version: "1.0"\n'
        f"provider: {{name: {name}, display_name: Test cloud, version: 0.1.0, type: remote}}\n"
        "services:\n"
        "  - {service_name: chat, task_type: text-generation, protocol: HTTP,\n"
        "     expose_protocol: HTTP, config_ref: 'aog:chat', auth_type: apikey}\n"
        f"platforms:\n{platforms}")
    shutil.copy2(REPO / "tests" / "plugins" / "echo-plugin" / "bin" / "echo-plugin",
                 d / "bin" / "run")
    return d


def test_remote_provider_key_check_and_hybrid_policy(gw, tmp_path):
    """`install --remote` sets the key and the gateway checks it live on the plugin; the
    key is never shown; the hybrid policy then decides who answers `chat`."""
    name = "cli-cloud-plugin"
    provider = f"remote_{name}_chat"
    ok(cli("plugin", "install", str(cloud_plugin(tmp_path, name)), url=gw.url))
    try:
        gw.wait_plugin_running(name=name, timeout=30)
        bad = cli("install", "chat", "--remote", "--name", provider, "--auth-key",
                  json.dumps({"api_key": "bad-key"}), url=gw.url)
        assert bad.returncode == 1, bad
        assert provider in bad.stderr and "invalid api_key" in bad.stderr, bad.stderr
        out = ok(cli("install", "chat", "--remote", "--name", provider, "--auth-key",
                     json.dumps({"api_key": "good-key"}), url=gw.url))
        assert provider in out and "good-key" not in out, out
        listed = ok(cli("get", "service_providers", "-s", "chat", url=gw.url))
        assert rows(listed)[provider][2] == "remote" and rows(listed)[provider][5] == "set"
        assert "good-key" not in listed + ok(cli("export", url=gw.url))

        ok(cli("edit", "service", "chat", "--hybrid-policy", "always_remote", url=gw.url))
        remote = cli("chat", "-v", "hello", url=gw.url)
        assert ok(remote).strip() == "cloud answer, key accepted"
        assert f"[served by {provider}]" in remote.stderr, remote.stderr
        ok(cli("edit", "service", "chat", "--hybrid-policy", "always_local", url=gw.url))
        local = cli("chat", "-v", "hello", url=gw.url)
        assert ok(local).split() == ["tok0", "tok1", "tok2", "tok3", "tok4"]
        assert "[served by local_echo-plugin_chat]" in local.stderr, local.stderr
    finally:
        cli("edit", "service", "chat", "--hybrid-policy", "default", url=gw.url)
        cli("plugin", "delete", name, url=gw.url)
    assert provider not in rows(ok(cli("get", "service_providers", url=gw.url)))


def test_get_models(gw):
    out = ok(cli("get", "models", url=gw.url))
    assert out.split()[:2] == ["MODEL", "PROVIDER"], out


# ---- plugins and chat with the echo plugin ------------------------------------------------


def test_plugin_list_info_stop_load(gw):
    listed = rows(ok(cli("plugin", "list", url=gw.url)))
    assert listed["echo-plugin"][1] == "running", listed
    info = ok(cli("plugin", "info", "echo-plugin", url=gw.url))
    assert "echo-plugin" in info
    try:
        ok(cli("plugin", "stop", "echo-plugin", url=gw.url))
        assert rows(ok(cli("plugin", "list", url=gw.url)))["echo-plugin"][1] == "stopped"
        proc = cli("chat", "hi", url=gw.url)
        assert proc.returncode == 1 and proc.stderr.startswith("error:"), proc.stderr
    finally:
        ok(cli("plugin", "load", "echo-plugin", url=gw.url))
    gw.wait_plugin_running(timeout=20)
    proc = cli("plugin", "info", "no-such-plugin", url=gw.url)
    assert proc.returncode == 1 and "no-such-plugin" in proc.stderr, proc.stderr


def test_plugin_install_disable_enable_delete(gw, tmp_path):
    """A plugin folder installed by path runs, is switched off and on, and deleted."""
    name = "cli-echo-plugin"
    folder = tmp_path / name
    shutil.copytree(REPO / "tests" / "plugins" / "echo-plugin", folder)
    manifest = folder / "plugin.yaml"
    manifest.write_text(manifest.read_text().replace("name: echo-plugin", f"name: {name}"))
    ok(cli("plugin", "install", str(folder), url=gw.url))
    try:
        gw.wait_plugin_running(name=name, timeout=30)
        assert rows(ok(cli("plugin", "list", url=gw.url)))[name][1:3] == ["running", "yes"]
        ok(cli("plugin", "disable", name, url=gw.url))
        assert rows(ok(cli("plugin", "list", url=gw.url)))[name][1:3] == ["stopped", "no"]
        ok(cli("plugin", "enable", name, url=gw.url))
        gw.wait_plugin_running(name=name, timeout=30)
    finally:
        ok(cli("plugin", "delete", name, url=gw.url))
    assert name not in rows(ok(cli("plugin", "list", url=gw.url)))
    proc = cli("plugin", "install", str(tmp_path / "nothing-here"), url=gw.url)
    assert proc.returncode == 2 and "nothing-here" in proc.stderr, proc.stderr


def test_chat_streams_and_keeps_a_conversation(gw):
    assert ok(cli("chat", "hello", url=gw.url)).strip() == "tok0 tok1 tok2 tok3 tok4"
    out = ok(cli("chat", url=gw.url, stdin="first\n\nsecond\n/bye\nnever sent\n"))
    assert [ln.strip() for ln in out.splitlines()] == ["tok0 tok1 tok2 tok3 tok4"] * 2, out


# ---- the shipped plugins with real engines ------------------------------------------------

ENGINE_PLUGINS = ["llamacpp-plugin", "embed-plugin", "whisper-plugin", "pocketsphinx-plugin"]
EMBED_PROVIDER = "local_embed-plugin_embed"
ENPT = "multilingual-e5-small-enpt"


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> Gateway:
    """A gateway with four shipped plugins (symlinked into its plugin folder) and an
    engine folder of its own whose engines and models link to the installed ones, so a
    model this module pulls or deletes never touches the shared engine folder."""
    src = require_engines(ENGINE_PLUGINS)
    root = tmp_path_factory.mktemp("cli-engines")
    plugins, engine_dir = root / "plugins", root / "engines"
    plugins.mkdir()
    for name in ENGINE_PLUGINS:
        (plugins / name).symlink_to(REPO / "plugins" / name, target_is_directory=True)
        models = engine_dir / name / "models"
        models.mkdir(parents=True)
        (engine_dir / name / "engine").symlink_to(src / name / "engine",
                                                  target_is_directory=True)
        for model in (src / name / "models").iterdir():
            if model.is_dir():
                (models / model.name).symlink_to(model, target_is_directory=True)
    gw = Gateway(root / "gw", {"AOGSTREAM_ENGINE_DIR": str(engine_dir)}, plugin_dir=plugins)
    gw.start()
    try:
        for name in ENGINE_PLUGINS:
            gw.wait_plugin_running(name=name, timeout=60)
        yield gw
    finally:
        gw.stop()


def test_chat_with_the_local_llm(engines):
    # greedy, with a plain system prompt: SmolLM2-135M's built-in one makes it ramble
    out = ok(cli("chat", "--temperature", "0", "--max-tokens", "24", "--system",
                 "You are a helpful assistant.", "What is the capital of France?",
                 url=engines.url, timeout=240))
    assert "Paris" in out, out


def test_pull_shows_progress_and_delete_removes(engines):
    # installing the service finds the engine and the default model in place
    ok(cli("install", "embed", url=engines.url, timeout=300))
    assert rows(ok(cli("get", "services", "embed", url=engines.url)))["embed"][2] == \
        "serving"
    proc = cli("pull", ENPT, "--for", "embed", "--provider", EMBED_PROVIDER,
               url=engines.url, timeout=600)
    out = ok(proc)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[-1] == f"{ENPT} pulled: success", out
    assert len(lines) >= 3, f"expected progress lines, got:\n{out}"
    assert "\r" not in out, "progress is redrawn only on a terminal"
    models = rows(ok(cli("get", "models", "-p", EMBED_PROVIDER, url=engines.url)))
    assert models[ENPT][4] == "downloaded", models

    ok(cli("delete", "model", ENPT, "-p", EMBED_PROVIDER, url=engines.url))
    assert ENPT not in rows(ok(cli("get", "models", "-p", EMBED_PROVIDER, url=engines.url)))


class _SlowModel(BaseHTTPRequestHandler):
    """Trickles at most 9 MB of a 10 MB "model" (so progress events flow), then stalls
    until the test ends: a pull that is surely still running when it is interrupted.
    `hung_up` is set the moment the downloader closes its connection, which is how the
    test knows the cancel reached the download itself and not just the CLI."""

    done = threading.Event()
    hung_up = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        try:
            for _ in range(90):
                if self.done.wait(0.1) or self._peer_closed():
                    return
                self.wfile.write(b"\0" * 100_000)
                self.wfile.flush()
            while not self.done.is_set():
                if self._peer_closed(timeout=0.05):
                    return
        except OSError:  # the downloader hung up in the middle of a write
            type(self).hung_up.set()

    def _peer_closed(self, timeout: float = 0.0) -> bool:
        ready, _, _ = select.select([self.connection], [], [], timeout)
        if ready and not self.connection.recv(1, socket.MSG_PEEK):
            type(self).hung_up.set()
            return True
        return False

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _sigint_as_from_a_terminal():
    """Give the children started here SIGINT at its default, as a shell gives its
    foreground job when the user presses Ctrl-C in a terminal.

    A test runner started in the background of a non-interactive shell (as `cmd &` in
    a script) inherits SIGINT *ignored*; Python then leaves it ignored, and so does every
    child it starts, so a SIGINT sent to the CLI would be dropped without a trace and
    the CLI would go on pulling. That, and not the CLI, is why this test failed in such
    runs. A Python-level handler in this process is reset to the default in a child on
    exec, which is exactly the terminal's disposition."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_cancels_a_pull(engines):
    """Ctrl-C on a pull stuck on a stalled server: the CLI exits 130 saying it was
    canceled, the gateway stops the plugin's download (the server sees the downloader
    hang up long before any read timeout), and no partial model is left listed."""
    _SlowModel.done.clear()
    _SlowModel.hung_up.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/stalled-e5.bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOGSTREAM_", "AOG_"))}
    with _sigint_as_from_a_terminal():
        proc = subprocess.Popen([sys.executable, "-m", "aogstream", "pull", url, "--for",
                                 "embed", "--provider", EMBED_PROVIDER], cwd=REPO, text=True,
                                env={**env, "AOG_HOST": engines.url, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = []
        while not any("%" in ln for ln in seen):  # progress shows: the pull is under way
            line = proc.stdout.readline()
            assert line, f"the pull ended early: {seen} {proc.stderr.read()}"
            seen.append(line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (out, err)
        assert "canceled" in err, err
        # far below the plugin's 30 s read timeout: the cancel reached the download
        assert _SlowModel.hung_up.wait(15), "the plugin kept downloading after Ctrl-C"
        models = ok(cli("get", "models", "-p", EMBED_PROVIDER, url=engines.url))
        assert "stalled-e5" not in models, models
    finally:
        _SlowModel.done.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        server.shutdown()
        server.server_close()


def test_transcribe_a_wav_file(engines, tmp_path):
    wav = tmp_path / "goforward.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(goforward_pcm())
    out = ok(cli("transcribe", str(wav), url=engines.url, timeout=240))
    assert "go forward" in out.lower(), out


def test_transcribe_a_mic_file_in_realtime(engines, tmp_path):
    raw = tmp_path / "goforward.raw"
    raw.write_bytes(goforward_pcm())
    out = ok(cli("transcribe", "--mic-file", str(raw), url=engines.url, timeout=240))
    finals = [ln.rsplit("\r", 1)[-1] for ln in out.split("\n") if ln.strip()]
    assert any("go forward" in ln.lower() for ln in finals), repr(out)
