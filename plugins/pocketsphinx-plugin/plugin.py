"""pocketsphinx-plugin: AOG's realtime speech-to-text protocol over PocketSphinx.

A session is one `speech-to-text-ws` task: the host forwards the client's run-task
(text), PCM16 mono audio (binary) and finish-task (text); this plugin answers with
`result-generated` events while audio arrives (partial sentences with
`sentence_end: false`, final ones with `true`) and `task-finished` at the end, in AOG's
`{header, payload}` envelope. Decoding runs in a worker thread so one busy session
never stalls the others. A session borrows its decoder from a small pool and gives it
back in `finally`, however it ends (finish, task-failed, client gone, host cancel): the
decoder is reset and reused by the next session, or freed at once beyond a couple of
idle ones, so memory stays flat over any number of sessions (see `pocketsphinx_plugin.pool`);
sessions beyond `POCKETSPHINX_MAX_SESSIONS` get a `task-failed` instead of a decoder.

Engine and models follow the same contract as the other local plugins (see
`aogstream.engines.base`): the engine (`pocketsphinx==5.1.1`) is installed into a
virtualenv in this plugin's data directory, and models are pulled into its model store
(`pocketsphinx-en-us` is the wheel's `pocketsphinx/model/en-us/` folder). Unlike the
others, decoding stays in this process: a realtime frame every 20 ms must not pay a
hop to an engine process. So once the engine is installed its site-packages are
appended to `sys.path` (appended: the gateway's own packages win for anything shared;
pocketsphinx has no dependencies) and pocketsphinx is imported when the first session
opens, never at plugin start. "Loading" a model therefore means checking it is pulled
and caching where its acoustic model, language model and dictionary are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pocketsphinx_plugin.pool import RecognizerPool
from pocketsphinx_plugin.recognizer import Event, ModelPaths, StreamingRecognizer

from aogstream import manifest as m
from aogstream.engines import realtime
from aogstream.engines.base import EnginePlugin
from aogstream.engines.install import EngineSpec
from aogstream.engines.models import PackageModel, StoredModel, check_name
from aogstream.engines.realtime import SessionCap, SessionError, envelope, task_failed
from aogstream.sdk import BidiMessage, BidirectionalPlugin, serve

HERE = Path(__file__).resolve().parent
log = logging.getLogger("pocketsphinx-plugin")
MODEL_NAME = "pocketsphinx-en-us"
ENGLISH = {"", "en", "en-us", "en_us", "english"}
SPHINX_DETAILS = {"format": "pocketsphinx", "family": "cmu-sphinx",
                  "parameter_size": "", "quantization_level": ""}


DEFAULT_MAX_SESSIONS = 32
"""Sessions decoded at once by one plugin process (all serving processes together)."""


def sentence(task_id: str, ev: Event) -> BidiMessage:
    """A recogniser event as AOG's `result-generated` sentence."""
    return realtime.sentence(task_id, ev.text, ev.begin_ms, ev.end_ms, ev.final)


class PocketsphinxPlugin(EnginePlugin, BidirectionalPlugin):
    """Realtime ASR sessions decoded in-process; engine and models managed like the others."""

    ENGINE = EngineSpec(name="pocketsphinx", packages=["pocketsphinx==5.1.1"],
                        check_import="pocketsphinx", version_of="pocketsphinx")
    CATALOG = [
        PackageModel(MODEL_NAME, "pocketsphinx==5.1.1", ["pocketsphinx/model/en-us/*"],
                     SPHINX_DETAILS, "CMU Sphinx US English: acoustic model, 3-gram LM "
                     "and CMUdict, from the pocketsphinx wheel",
                     strip="pocketsphinx/model/"),
    ]
    DEFAULT_MODEL = MODEL_NAME

    def __init__(self, plugin_dir: Path, name: str) -> None:
        super().__init__(plugin_dir, name)
        # loaded models: name → (the stored model, where its parts are)
        self.models: dict[str, tuple[StoredModel, ModelPaths]] = {}
        self._announced = False
        self.pool = RecognizerPool(self._recognizer)
        self.sessions = SessionCap(name, "POCKETSPHINX_MAX_SESSIONS", DEFAULT_MAX_SESSIONS,
                                   "each session holds a decoder of ~50-90 MB")

    # ---- the engine runs in this process ----

    def engine_argv(self, model: StoredModel, port: int) -> list[str]:
        """Unused: pocketsphinx decodes in this process (no engine process to start)."""
        raise NotImplementedError("pocketsphinx-plugin decodes in-process")

    def _engine_on_path(self) -> None:
        """Make the installed engine importable (appended: the gateway's packages win)."""
        self._require_installed()
        site = str(self.env.site_packages())
        if site not in sys.path:
            sys.path.append(site)

    def _load(self, model: str | None) -> ModelPaths:
        """Mark `model` (default when None) loaded and return its parts; clear errors
        when the engine or the model is missing."""
        name = model or self.default_model()
        self._require_installed()
        cached = self.models.get(name)
        if cached is not None and cached[0].path.is_dir():
            return cached[1]
        stored = self.store.get(check_name(name))
        if stored is None:
            self.models.pop(name, None)
            raise m.PluginError(m.ERR_CODE_MODEL_NOT_FOUND, self._pull_hint(name), "")
        try:
            paths = ModelPaths.from_folder(stored.path)
        except ValueError as exc:
            raise m.PluginError(m.ERR_CODE_MODEL_INVALID_FORMAT,
                                f"model {name!r} is not a pocketsphinx model: {exc}", "") from exc
        self.models[name] = (stored, paths)
        return paths

    def _pull_hint(self, name: str) -> str:
        default = self.default_model()
        how = (f"run `aogstream engine install {self.name}` (it pulls {default})"
               if name == default else
               f"pull it with the host's PullModel (model={name!r}; known: "
               f"{', '.join(c.name for c in self.CATALOG)}, or a local model folder)")
        return f"model {name!r} is not pulled on {self.name}; {how}"

    # ---- the local-engine contract, where in-process decoding differs from the base ----

    async def start_engine(self, mode: str) -> None:
        self._require_installed()
        self.started = True
        default = self.default_model()
        if default and self.store.get(default) is not None:
            self._load(default)

    async def stop_engine(self) -> None:
        self.started = False
        self.models.clear()
        await asyncio.to_thread(self.pool.clear)

    async def load_model(self, req: m.LoadModelRequest) -> None:
        self._load(req.model or None)

    async def unload_model(self, req: m.UnloadModelRequest) -> None:
        for name in req.models:
            self.models.pop(name, None)
        await asyncio.to_thread(self.pool.clear)

    async def delete_model(self, req: m.DeleteModelRequest) -> None:
        self.models.pop(req.model, None)
        await asyncio.to_thread(self.pool.clear)
        self.store.delete(req.model)

    async def get_running_models(self) -> m.ListModelsResponse:
        return m.ListModelsResponse(models=[stored.info() for stored, _ in
                                            self.models.values()])

    # ---- realtime sessions ----

    async def invoke_service_bidirectional(
        self, service_name: str, ws_conn_id: str, auth_info: str,
        incoming: AsyncIterator[BidiMessage], send: Any,
    ) -> None:
        task_id = ws_conn_id
        rec: StreamingRecognizer | None = None
        paths: ModelPaths | None = None
        slot = False
        try:
            async for msg in incoming:
                if msg.message_type == "binary":
                    if rec is None:
                        await send(task_failed(task_id, realtime.CLIENT_ERROR,
                                               "audio before run-task"))
                        return
                    for ev in await asyncio.to_thread(rec.feed, msg.data):
                        await send(sentence(task_id, ev))
                    continue
                ctl = json.loads(msg.data or b"{}")
                action = ctl.get("action")
                task_id = ctl.get("task_id") or task_id
                if action == "run-task":
                    try:
                        if rec is not None:
                            raise SessionError("CLIENT_ERROR", "a task is already running "
                                               "in this session; send finish-task first")
                        rate, paths = self._session_setup(ctl, msg.metadata)
                        self.sessions.enter()
                        slot = True
                        rec = await self._borrow(rate, paths)
                    except SessionError as exc:
                        await send(task_failed(task_id, exc.code, exc.message))
                        return
                elif action == "finish-task":
                    if rec is not None and paths is not None:
                        for ev in await asyncio.to_thread(rec.finish):
                            await send(sentence(task_id, ev))
                        # back in the pool before the client hears the end, so a client
                        # that starts its next session at once finds the decoder ready
                        done, rec = rec, None
                        await asyncio.to_thread(self.pool.give_back, done, paths)
                    await send(envelope("task-finished", task_id))
                    return
        finally:
            if slot:
                self.sessions.leave()
            if rec is not None and paths is not None:
                # giving back waits for a decode still running in a worker thread: let a
                # worker wait for it rather than the event loop (and never await here:
                # a cancelled session must not be kept from ending)
                self.pool.give_back_soon(rec, paths)

    async def _borrow(self, rate: int, paths: ModelPaths) -> StreamingRecognizer:
        """A decoder from the pool, in a worker thread (a new one loads the model, ~0.4 s).

        A session cancelled meanwhile cannot stop the thread: the decoder it hands over
        is given back when it arrives, never left as the result of a forgotten future.
        """
        fut = asyncio.get_running_loop().run_in_executor(None, self.pool.borrow, rate, paths)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            def back(done: asyncio.Future[StreamingRecognizer]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self.pool.give_back_soon(done.result(), paths)

            fut.add_done_callback(back)
            raise

    def _session_setup(self, run: dict[str, Any], meta: dict[str, str]
                       ) -> tuple[int, ModelPaths]:
        """Check a run-task (engine, model, language, format) on the event loop."""
        task = realtime.run_task(run, meta)
        try:
            self._engine_on_path()
            paths = self._load(task.model)
        except m.PluginError as exc:
            raise realtime.session_error(exc) from exc
        if task.language not in ENGLISH:
            raise SessionError("MODEL_ERROR", (
                f"pocketsphinx-plugin ships an English (en-us) model only; "
                f"language {task.language!r} is not available"))
        return task.sample_rate, paths

    def _recognizer(self, rate: int, paths: ModelPaths) -> StreamingRecognizer:
        """Build a session's recogniser (in a worker thread: this loads the model)."""
        try:
            rec = StreamingRecognizer(sample_rate=rate, model=paths)
        except ValueError as exc:
            raise SessionError("MODEL_ERROR", str(exc)) from exc
        except ImportError as exc:
            raise SessionError("SERVER_ERROR", (
                f"the installed pocketsphinx does not import in this Python ({exc}); "
                f"reinstall it: `aogstream engine install {self.name} --cover`")) from exc
        except RuntimeError as exc:
            raise SessionError("MODEL_ERROR",
                               f"pocketsphinx could not load the model in {paths.hmm}: "
                               f"{exc}") from exc
        if not self._announced:
            self._announced = True
            import pocketsphinx

            log.info("decoding with pocketsphinx from %s", Path(pocketsphinx.__file__).parent)
        return rec


if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    serve(PocketsphinxPlugin(HERE, "pocketsphinx-plugin"))
