"""pocketsphinx-plugin's engine and model contract, through the host's client.

One real plugin process over real gRPC (`running_plugin`) with a fresh engine directory
in tmp, so nothing shared is touched: a real pip install of pocketsphinx into the
plugin's data directory, a real pull of the en-us model from the pocketsphinx wheel, and
realtime sessions decoded in the plugin process on that engine and that model. The whole
life cycle is one test because each step needs the state the previous one left.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from audio import GOFORWARD_TEXT, frames, goforward_pcm, word_error_rate
from hostutil import running_plugin

from aogstream import manifest as m

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "pocketsphinx-plugin"
MODEL = "pocketsphinx-en-us"
CONN = "conn-ps-1"


async def pull(client: Any, req: m.PullModelRequest) -> list[dict[str, Any]]:
    events = []
    with trio.fail_after(300):
        async with client.pull_model_stream(req) as stream:
            async for ev in stream:
                events.append(ev)
    return events


async def session(client: Any, pcm: bytes = b"", **params: Any) -> list[dict[str, Any]]:
    """One realtime task as the gateway runs it: run-task, audio frames, finish-task;
    returns every event the plugin sent up to task-finished / task-failed."""
    meta = {"ws_conn_id": CONN, "language": "en", "format": "pcm", "sample_rate": "16000"}
    run = {"task": "speech-to-text-ws", "action": "run-task", "task_id": CONN,
           "parameters": {"format": "pcm", "sample_rate": 16000, "language": "en", **params}}
    events: list[dict[str, Any]] = []
    with trio.fail_after(60):
        async with client.invoke_service_bidi("speech-to-text-ws", "", metadata=meta) as s:
            await s.send(json.dumps(run).encode(), "text", meta)

            async def talk() -> None:
                for f in frames(pcm, 100):
                    await s.send(f, "binary")
                await s.send(json.dumps({"action": "finish-task"}).encode(), "text")

            async with trio.open_nursery() as nursery:
                if pcm:
                    nursery.start_soon(talk)
                async for msg in s:
                    ev = json.loads(msg.data)
                    events.append(ev)
                    if ev["header"]["event"] in ("task-finished", "task-failed"):
                        break
                nursery.cancel_scope.cancel()
    return events


def failure(events: list[dict[str, Any]]) -> tuple[str, str]:
    header = events[-1]["header"]
    assert header["event"] == "task-failed", events
    return header["error_code"], header["error_message"]


def final_text(events: list[dict[str, Any]]) -> str:
    return " ".join(e["payload"]["output"]["sentence"]["text"] for e in events
                    if e["header"]["event"] == "result-generated"
                    and e["payload"]["output"]["sentence"]["sentence_end"])


async def running(client: Any) -> list[str]:
    return [mi.name for mi in (await client.get_running_models(timeout=10)).models]


async def test_engine_and_model_life_cycle(tmp_path):
    engine_dir = tmp_path / "engines"
    data = engine_dir / PLUGIN
    async with running_plugin(REPO / "plugins" / PLUGIN, engine_dir=engine_dir,
                              start_engines=False) as (_, client):
        # ---- no engine yet: clear errors that name the install command ----
        assert await client.check_engine(timeout=30) is False
        with pytest.raises(m.PluginError) as info:
            await client.health_check(timeout=10)
        assert info.value.code == m.ERR_CODE_ENGINE_NOT_INSTALLED
        code, message = failure(await session(client))
        assert code == "SERVER_ERROR"
        assert f"aogstream engine install {PLUGIN}" in message, message

        # ---- install: real pip, progress in the plugin's data dir; a second is a no-op ----
        t0 = time.monotonic()
        await client.install_engine(timeout=600)
        first = time.monotonic() - t0
        progress = [json.loads(line) for line in
                    (data / "engine" / "install-progress.jsonl").read_text().splitlines()]
        assert len(progress) >= 3, progress
        assert any("installed" in ev["status"] for ev in progress), progress
        assert (data / "engine" / "venv").is_dir()
        assert await client.check_engine(timeout=30) is True
        t0 = time.monotonic()
        await client.install_engine(timeout=60)
        assert time.monotonic() - t0 < first / 3, (first, time.monotonic() - t0)
        assert (await client.get_version(timeout=10)).version == "5.1.1"
        await client.health_check(timeout=10)

        # engine there, model not pulled: the session says how to get it
        code, message = failure(await session(client))
        assert code == "MODEL_ERROR"
        assert MODEL in message and "not pulled" in message, message
        assert f"aogstream engine install {PLUGIN}" in message, message
        with pytest.raises(m.PluginError) as info:
            await client.load_model(m.LoadModelRequest(model=MODEL), timeout=10)
        assert info.value.code == m.ERR_CODE_MODEL_NOT_FOUND

        # ---- pull from the wheel: AOG progress events, then success ----
        events = await pull(client, m.PullModelRequest(model=MODEL))
        assert events[-1] == {"status": "success"}, events[-3:]
        byte_events = [e for e in events if "total" in e]
        assert byte_events, events
        for ev in byte_events:
            assert set(ev) == {"status", "digest", "total", "completed"}, ev
            assert ev["digest"].startswith("sha256:") and 0 < ev["completed"] <= ev["total"]
        assert byte_events[-1]["completed"] == byte_events[-1]["total"]
        folder = data / "models" / MODEL
        assert (folder / "en-us" / "en-us" / "mdef").is_file()  # the wheel's layout is kept
        [info_] = (await client.list_models(timeout=10)).models
        assert info_.name == MODEL and info_.size > 30_000_000
        assert info_.digest.startswith("sha256:") and len(info_.digest) == 7 + 64

        # ---- load / running / unload; StartEngine preloads, StopEngine unloads ----
        assert await running(client) == []
        await client.load_model(m.LoadModelRequest(model=MODEL), timeout=10)
        assert await running(client) == [MODEL]
        await client.unload_model(m.UnloadModelRequest(models=[MODEL]), timeout=10)
        assert await running(client) == []
        await client.start_engine(timeout=10)
        assert await running(client) == [MODEL]
        await client.stop_engine(timeout=10)
        assert await running(client) == []
        with pytest.raises(m.PluginError) as info:
            await client.load_model(m.LoadModelRequest(model="no-such-model"), timeout=10)
        assert info.value.code == m.ERR_CODE_MODEL_NOT_FOUND
        assert "no-such-model" in info.value.message

        # ---- a session decodes on this engine with this model ----
        events = await session(client, goforward_pcm())
        assert events[-1]["header"]["event"] == "task-finished", events[-1]
        assert word_error_rate(GOFORWARD_TEXT, final_text(events)) <= 0.25, final_text(events)
        assert await running(client) == [MODEL]  # a session loads its model

        # ---- a model pulled from a local folder, under another name ----
        copy = tmp_path / "elsewhere" / "my-sphinx"
        shutil.copytree(folder, copy)
        events = await pull(client, m.PullModelRequest(model=str(copy), name="sphinx-copy"))
        assert events[-1] == {"status": "success"}, events[-3:]
        listed = {mi.name: mi for mi in (await client.list_models(timeout=10)).models}
        assert set(listed) == {MODEL, "sphinx-copy"}
        assert listed["sphinx-copy"].digest == listed[MODEL].digest  # same files
        events = await session(client, goforward_pcm(), model="sphinx-copy")
        assert word_error_rate(GOFORWARD_TEXT, final_text(events)) <= 0.25, final_text(events)
        assert sorted(await running(client)) == [MODEL, "sphinx-copy"]

        # ---- delete: the folder goes, the model is no longer loaded or listed ----
        await client.delete_model(m.DeleteModelRequest(model=MODEL), timeout=10)
        assert not folder.exists()
        assert await running(client) == ["sphinx-copy"]
        await client.delete_model(m.DeleteModelRequest(model="sphinx-copy"), timeout=10)
        assert (await client.list_models(timeout=10)).models == []
        assert await running(client) == []
        assert copy.is_dir(), "deleting a model pulled from a folder leaves the source alone"
        code, message = failure(await session(client))
        assert code == "MODEL_ERROR" and "not pulled" in message

        # ---- an unknown name is a clear error ----
        events = await pull(client, m.PullModelRequest(model="no-such-model"))
        [err] = events
        assert "no-such-model" in err["error"] and MODEL in err["error"], err
        await client.health_check(timeout=10)
