"""Hosting plugin processes: go-plugin handshake and environment, every PluginClient
method against the real echo plugin, stop, restart, the provider that serves calls
across a restart, and discovery."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import trio
from hostutil import ECHO_PLUGIN, running_plugin, wait_until

from aogstream import errors
from aogstream import manifest as m
from aogstream.host.process import discover, plugin_env
from aogstream.invocation import Mode, open_invocation
from aogstream.rpc.handshake import COOKIE_KEY, COOKIE_VALUE


def req(**fields) -> bytes:
    return json.dumps(fields).encode()


# ---- environment and the cookie --------------------------------------------------------


def test_plugin_env_has_the_cookie_and_go_plugin_variables(monkeypatch):
    monkeypatch.setenv("SOME_HOST_VARIABLE", "kept")
    monkeypatch.setenv("PLUGIN_CLIENT_CERT", "nope")
    env = plugin_env({"EXTRA": "1"})
    assert env["AOG_PLUGIN"] == "aog-provider-plugin-v1" == f"{COOKIE_VALUE}"
    assert COOKIE_KEY == "AOG_PLUGIN"
    assert env["PLUGIN_MIN_PORT"] == "10000"
    assert env["PLUGIN_MAX_PORT"] == "25000"
    assert env["PLUGIN_PROTOCOL_VERSIONS"] == "1"
    assert env["AOG_VERSION"] == "v0.7"
    assert env["SOME_HOST_VARIABLE"] == "kept"
    assert env["EXTRA"] == "1"
    assert "PLUGIN_CLIENT_CERT" not in env  # no AutoMTLS


def test_sdk_plugin_without_the_cookie_exits_1_with_a_hint():
    env = {k: v for k, v in os.environ.items() if k != COOKIE_KEY}
    env["AOGSTREAM_PYTHON"] = sys.executable
    res = subprocess.run(
        ["sh", str(ECHO_PLUGIN / "bin" / "echo-plugin")],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert res.returncode == 1
    assert b"This binary is a plugin" in res.stderr
    assert res.stdout == b""  # no handshake line


async def test_plugin_over_tcp(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHO_PLUGIN_EVENTS", str(tmp_path / "events.jsonl"))
    monkeypatch.setenv("AOGSTREAM_PLUGIN_NETWORK", "tcp")
    async with running_plugin() as (plugin, client):
        host, _, port = client.channel.target.rpartition(":")
        assert host == "127.0.0.1"
        assert 10000 <= int(port) <= 25000
        await client.health_check()
        out = json.loads(await client.invoke_service("generate", "", req(id="tcp")))
        assert out["id"] == "tcp"
        events = []
        async with client.invoke_service_stream("chat", "", req(id="t", tokens=3)) as it:
            async for batch in it:
                events.extend(batch)
        assert len(events) == 4
        assert plugin.state == "running"


# ---- every PluginClient method ---------------------------------------------------------


async def test_every_client_method(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHO_PLUGIN_EVENTS", str(tmp_path / "events.jsonl"))
    async with running_plugin() as (plugin, client):
        await client.health_check()

        assert await client.get_operate_status() == 1
        await client.set_operate_status(0)
        assert await client.get_operate_status() == 0
        await client.set_operate_status(1)
        assert await client.get_operate_status() == 1

        on_disk = m.load_manifest(ECHO_PLUGIN)
        assert client.get_manifest() is plugin.manifest
        fetched = await client.fetch_manifest()
        assert fetched.to_dict() == on_disk.to_dict()

        models = client.get_support_model_list()
        assert [(x.id, x.service_name, x.name, x.is_default) for x in models] == [
            ("echo-plugin:chat:echo", "chat", "echo", "true")
        ]
        assert models[0].service_provider_name == "local_echo-plugin_chat"

        out = json.loads(await client.invoke_service("generate", "", req(id="g", a=[1])))
        assert out == {"id": "g", "service": "generate", "echo": {"id": "g", "a": [1]}}
        chat = json.loads(await client.invoke_service("chat", "", req(id="c", tokens=2)))
        assert chat["message"]["content"] == "tok0 tok1 " and chat["finished"] is True

        batches = []
        async with client.invoke_service_stream("chat", "", req(id="st", tokens=2)) as it:
            async for batch in it:
                batches.extend(json.loads(x) for x in batch)
        assert [b["message"]["content"] for b in batches] == ["tok0 ", "tok1 ", ""]

        async with client.invoke_service_bidi(
            "echo-ws", "", metadata={"ws_conn_id": "conn-1"}
        ) as session:
            await session.send(b"hello", "text")
            await session.send(b"\x00\x01", "binary")
            first = await session.receive()
            second = await session.receive()
            await session.done_writing()
            with pytest.raises(trio.EndOfChannel):
                await session.receive()
        assert (bytes(first.data), first.message_type) == (b"hello", "text")
        assert (bytes(second.data), second.message_type) == (b"\x00\x01", "binary")

        assert await client.check_engine() is True

        unimplemented = {
            "start_engine": lambda: client.start_engine("daemon"),
            "stop_engine": client.stop_engine,
            "get_config": client.get_config,
            "install_engine": client.install_engine,
            "init_env": client.init_env,
            "upgrade_engine": client.upgrade_engine,
            "pull_model": lambda: client.pull_model(m.PullModelRequest(model="x")),
            "delete_model": lambda: client.delete_model(m.DeleteModelRequest(model="x")),
            "list_models": client.list_models,
            "load_model": lambda: client.load_model(m.LoadModelRequest(model="x")),
            "unload_model": lambda: client.unload_model(m.UnloadModelRequest(models=["x"])),
            "get_running_models": client.get_running_models,
            "get_version": client.get_version,
        }
        for name, call in unimplemented.items():
            with pytest.raises(m.PluginError) as info:
                await call()
            assert info.value.code == m.ERR_CODE_UNIMPLEMENTED, name
            assert "not supported" in info.value.message, name

        # the streamed pull reports the failure as a progress event with an error
        async with client.pull_model_stream(m.PullModelRequest(model="x")) as events:
            got = [e async for e in events]
        assert len(got) == 1 and "not supported" in got[0]["error"]
        progress = []

        async def on_progress(p):
            progress.append(p)

        with pytest.raises(m.PluginError) as info:
            await client.pull_model(m.PullModelRequest(model="x"), progress=on_progress)
        assert info.value.code == m.ERR_CODE_MODEL_PULL_FAILED
        assert progress == []

        for name, call in {
            "set_auth": lambda: client.set_auth("apikey", {"api_key": "k"}),
            "validate_auth": client.validate_auth,
            "refresh_auth": client.refresh_auth,
        }.items():
            with pytest.raises(m.PluginError) as info:
                await call()
            assert info.value.code == m.ERR_CODE_INTERNAL == 11, name
            assert info.value.message == "not a remote plugin", name

        with pytest.raises(m.PluginError) as info:
            await client.invoke_service("generate", "", req(fail_code=2, fail_message="bad"))
        assert (info.value.code, info.value.message) == (2, "bad")

        # the connection is still healthy after all those failures
        await client.health_check()


# ---- stop and restart -------------------------------------------------------------------


async def test_stop_uses_shutdown_and_ends_the_process(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHO_PLUGIN_EVENTS", str(tmp_path / "events.jsonl"))
    async with running_plugin() as (plugin, _client):
        proc = plugin._process
        assert proc is not None and psutil.pid_exists(proc.pid)
        t0 = time.monotonic()
        await plugin.stop()
        took = time.monotonic() - t0
        print(f"\nstop took {took * 1000:.0f} ms")
        assert took < 2.5
        # exit status 0: it left on the Shutdown rpc, it was not killed
        assert proc.returncode == 0
    assert plugin.state == "stopped"
    assert plugin.restarts == 0


STUBBORN_PLUGIN_PY = """\
from aogstream.sdk import LocalPluginProvider, serve
from aogstream.sdk import server


async def ignore_shutdown(self, request, context):
    return server.grpc_controller_pb2.Empty()


server._Controller.Shutdown = ignore_shutdown

if __name__ == "__main__":
    serve(LocalPluginProvider())
"""

STUBBORN_MANIFEST = """\
version: "1.0"
provider: {name: stubborn-plugin, version: 0.1.0, type: local}
services:
  - {service_name: chat, config_ref: "aog:chat"}
platforms:
  linux_amd64: {executable: bin/run}
  linux_arm64: {executable: bin/run}
  darwin_amd64: {executable: bin/run}
  darwin_arm64: {executable: bin/run}
"""

RUN_SH = """\
#!/bin/sh
cd "$(dirname "$0")/.." && exec "$AOGSTREAM_PYTHON" plugin.py
"""


async def test_plugin_ignoring_shutdown_is_killed_after_the_grace(tmp_path):
    root = tmp_path / "stubborn-plugin"
    (root / "bin").mkdir(parents=True)
    (root / "plugin.yaml").write_text(STUBBORN_MANIFEST)
    (root / "plugin.py").write_text(STUBBORN_PLUGIN_PY)
    (root / "bin" / "run").write_text(RUN_SH)
    async with running_plugin(root, plugin_stop_grace=0.5) as (plugin, client):
        await client.health_check()
        proc = plugin._process
        assert proc is not None
        t0 = time.monotonic()
        await plugin.stop()
        took = time.monotonic() - t0
        print(f"\nstubborn plugin stopped after {took * 1000:.0f} ms")
        assert proc.returncode == -signal.SIGKILL
        assert 0.5 <= took < 2.5


async def test_killed_plugin_is_restarted(monkeypatch, tmp_path):
    monkeypatch.setenv("ECHO_PLUGIN_EVENTS", str(tmp_path / "events.jsonl"))
    async with running_plugin(restart_backoff_initial=0.1) as (plugin, client):
        old_pid = plugin.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        t0 = time.monotonic()
        await wait_until(
            lambda: plugin.state == "running" and plugin.pid != old_pid, 8, "restarted"
        )
        took = time.monotonic() - t0
        print(f"\nrestarted in {took * 1000:.0f} ms (new pid {plugin.pid})")
        assert plugin.restarts >= 1
        assert plugin.last_error == ""  # cleared once running again
        assert not psutil.pid_exists(old_pid) or psutil.Process(old_pid).status() == "zombie"
        new_client = plugin.client
        assert new_client is not None and new_client is not client
        await new_client.health_check()
        out = json.loads(await new_client.invoke_service("generate", "", req(id="again")))
        assert out["id"] == "again"


async def test_the_provider_serves_calls_across_a_restart(monkeypatch, tmp_path):
    """Routes hold the supervisor's provider: one object for the plugin's life, which
    serves invocations, health and models over whichever process runs now, and says
    "not running" while there is none."""
    monkeypatch.setenv("ECHO_PLUGIN_EVENTS", str(tmp_path / "events.jsonl"))

    async def generate(tag: str) -> str:
        async with open_invocation(provider, "generate", Mode.UNARY, req(id=tag),
                                   timeout=10) as inv:
            return json.loads(await inv.result())["id"]

    async with running_plugin(restart_backoff_initial=0.5) as (plugin, _client):
        provider = plugin.provider
        assert (provider.kind, provider.name, provider.state) == ("process", plugin.name,
                                                                  "running")
        assert provider.manifest is plugin.manifest
        await provider.health()
        with pytest.raises(errors.GatewayError) as info:  # the echo plugin lists no models
            await provider.models()
        assert info.value.bcode == errors.PLUGIN_NOT_IMPLEMENTED
        assert await generate("before") == "before"

        old_pid = plugin.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await wait_until(lambda: provider.state != "running", 5, "seen down")
        with pytest.raises(errors.GatewayError) as info:  # within the 0.5 s backoff
            await provider.health()
        assert info.value.bcode == errors.PLUGIN_NOT_RUNNING
        assert "not running" in info.value.message

        await wait_until(lambda: provider.state == "running", 8, "restarted")
        assert plugin.provider is provider and plugin.pid != old_pid
        await provider.health()
        assert await generate("after") == "after"


# ---- discovery ----------------------------------------------------------------------------


def test_discover_reports_broken_and_conflicting_plugins(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(ECHO_PLUGIN, first / "echo-plugin")
    # a manifest with a missing field
    broken = first / "broken-plugin"
    broken.mkdir()
    (broken / "plugin.yaml").write_text(
        textwrap.dedent(
            """\
            version: "1.0"
            provider: {name: broken-plugin, type: local}
            services:
              - {service_name: chat}
            platforms:
              linux_amd64: {executable: bin/x}
            """
        )
    )
    # the echo plugin's manifest again, in a folder of another name
    renamed = first / "echo-copy"
    shutil.copytree(ECHO_PLUGIN, renamed)
    # a folder that is not a plugin at all is skipped silently
    (first / "notes").mkdir()
    # the same plugin name again, in a later directory
    shutil.copytree(ECHO_PLUGIN, second / "echo-plugin")

    found, problems = discover([first, second, tmp_path / "missing"])
    assert [(x.provider.name, x.plugin_dir) for x in found] == [
        ("echo-plugin", first / "echo-plugin")
    ]
    print("\n" + "\n".join(problems))
    assert len(problems) == 3
    broken_msg, renamed_msg, conflict_msg = problems
    assert str(broken / "plugin.yaml") in broken_msg
    assert "services[0].config_ref" in broken_msg
    assert str(renamed / "plugin.yaml") in renamed_msg
    assert "provider.name" in renamed_msg and "echo-copy" in renamed_msg
    assert str(second / "echo-plugin") in conflict_msg
    assert "conflict" in conflict_msg and "'echo-plugin'" in conflict_msg
    assert str(first / "echo-plugin") in conflict_msg
