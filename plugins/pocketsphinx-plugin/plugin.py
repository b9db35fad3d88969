"""pocketsphinx-plugin: AOG's realtime speech-to-text protocol over PocketSphinx.

A session is one `speech-to-text-ws` task: the host forwards the client's run-task
(text), PCM16 mono audio (binary) and finish-task (text); this plugin answers with
`result-generated` events while audio arrives (partial sentences with
`sentence_end: false`, final ones with `true`) and `task-finished` at the end, in AOG's
`{header, payload}` envelope. Decoding runs in a worker thread so one busy session
never stalls the others. A host that leaves cancels the session; the decoder is
released in `finally`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pocketsphinx_plugin.recognizer import Event, StreamingRecognizer

from aogstream import manifest as m
from aogstream.sdk import (
    BidiMessage,
    BidirectionalPlugin,
    LocalPluginProvider,
    PluginError,
    serve,
)

log = logging.getLogger("pocketsphinx-plugin")
MODEL_NAME = "pocketsphinx-en-us"
ENGLISH = {"", "en", "en-us", "en_us", "english"}


def envelope(event: str, task_id: str, payload: dict[str, Any] | None = None,
             **error: str) -> BidiMessage:
    header: dict[str, Any] = {"action": "", "streaming": "", "task_id": task_id, "event": event}
    header.update({k: v for k, v in error.items() if v})
    return BidiMessage.text({"header": header, "payload": payload or {}})


def sentence(task_id: str, ev: Event) -> BidiMessage:
    return envelope("result-generated", task_id, {"output": {"sentence": {
        "begin_time": ev.begin_ms, "end_time": ev.end_ms, "text": ev.text,
        "sentence_end": ev.final,
    }}})


def _model_dir() -> Path:
    import pocketsphinx

    return Path(pocketsphinx.__file__).parent / "model" / "en-us"


class PocketsphinxPlugin(LocalPluginProvider, BidirectionalPlugin):
    """Realtime ASR sessions plus the local-engine contract for a bundled engine."""

    def __init__(self) -> None:
        self.running = False
        self.sessions = 0

    async def invoke_service_bidirectional(
        self, service_name: str, ws_conn_id: str, auth_info: str,
        incoming: AsyncIterator[BidiMessage], send: Any,
    ) -> None:
        task_id = ws_conn_id
        rec: StreamingRecognizer | None = None
        self.sessions += 1
        try:
            async for msg in incoming:
                if msg.message_type == "binary":
                    if rec is None:
                        await send(envelope("task-failed", task_id, error_code="CLIENT_ERROR",
                                            error_message="audio before run-task"))
                        return
                    for ev in await asyncio.to_thread(rec.feed, msg.data):
                        await send(sentence(task_id, ev))
                    continue
                ctl = json.loads(msg.data or b"{}")
                action = ctl.get("action")
                task_id = ctl.get("task_id") or task_id
                if action == "run-task":
                    # the model takes ~0.4 s to load: never on the event loop
                    rec, failure = await asyncio.to_thread(self._open, ctl, msg.metadata)
                    if failure:
                        await send(envelope("task-failed", task_id, error_code="MODEL_ERROR",
                                            error_message=failure))
                        return
                elif action == "finish-task":
                    if rec is not None:
                        for ev in await asyncio.to_thread(rec.finish):
                            await send(sentence(task_id, ev))
                    await send(envelope("task-finished", task_id))
                    return
        finally:
            self.sessions -= 1
            if rec is not None:
                # close() waits for a decode still running in a worker thread: let a
                # worker wait for it rather than the event loop
                asyncio.get_running_loop().run_in_executor(None, rec.close)

    def _open(self, run: dict[str, Any], meta: dict[str, str]
              ) -> tuple[StreamingRecognizer | None, str]:
        params = run.get("parameters") or {}
        language = str(params.get("language") or meta.get("language") or "").lower()
        if language not in ENGLISH:
            return None, (f"pocketsphinx-plugin ships an English (en-us) model only; "
                          f"language {language!r} is not available")
        fmt = str(params.get("format") or meta.get("format") or "pcm").lower()
        if fmt != "pcm":
            return None, f"audio format {fmt!r} is not supported; send raw PCM16 mono (pcm)"
        rate = int(params.get("sample_rate") or meta.get("sample_rate") or 16000)
        try:
            return StreamingRecognizer(sample_rate=rate), ""
        except ValueError as exc:
            return None, str(exc)

    # ---- the local-engine contract (the engine ships inside the pocketsphinx wheel) ----

    async def check_engine(self) -> bool:
        try:
            return _model_dir().is_dir()
        except ImportError:
            return False

    async def install_engine(self, cover: bool = False) -> None:
        if not await self.check_engine():
            raise PluginError(m.ERR_CODE_ENGINE_INSTALL_FAILED,
                              "pocketsphinx is not installed; pip install pocketsphinx==5.1.1")

    async def init_env(self) -> None:
        return None

    async def start_engine(self, mode: str) -> None:
        await self.install_engine()
        self.running = True

    async def stop_engine(self) -> None:
        self.running = False

    async def upgrade_engine(self) -> None:
        return None

    async def health_check(self) -> None:
        if not await self.check_engine():
            raise PluginError(m.ERR_CODE_ENGINE_NOT_INSTALLED, "pocketsphinx model is missing")

    async def get_version(self) -> m.EngineVersionResponse:
        from importlib.metadata import version

        return m.EngineVersionResponse(version=version("pocketsphinx"))

    async def list_models(self) -> m.ListModelsResponse:
        d = _model_dir()
        files = sorted(p for p in d.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.name.encode())
            digest.update(str(p.stat().st_size).encode())
        mtime = max((p.stat().st_mtime for p in files), default=time.time())
        return m.ListModelsResponse(models=[m.ModelInfo(
            name=MODEL_NAME, model=MODEL_NAME,
            modified_at=datetime.fromtimestamp(mtime, tz=UTC),
            size=sum(p.stat().st_size for p in files), digest=digest.hexdigest(),
            details=m.ModelDetails(format="pocketsphinx", family="cmu-sphinx",
                                   families=["cmu-sphinx"], parameter_size="",
                                   quantization_level=""),
        )])

    async def get_running_models(self) -> m.ListModelsResponse:
        return await self.list_models() if self.sessions else m.ListModelsResponse(models=[])

    async def load_model(self, req: m.LoadModelRequest) -> None:
        if req.model not in (MODEL_NAME, ""):
            raise PluginError(m.ERR_CODE_MODEL_NOT_FOUND, f"unknown model {req.model!r}; "
                              f"this plugin offers {MODEL_NAME}")

    async def unload_model(self, req: m.UnloadModelRequest) -> None:
        return None


if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    serve(PocketsphinxPlugin())
