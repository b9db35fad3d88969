"""EnginePlugin: AOG's local-plugin contract for an engine kept in its own venv.

A subclass says which packages make the engine (`ENGINE`), which models it knows
(`CATALOG`, models shipped in PyPI packages), how to start an engine process for a
pulled model (`engine_argv`), and how to serve each service. Everything else is the
same for every local plugin and lives here:

- CheckEngine / InstallEngine / UpgradeEngine: the venv in `<plugin data>/engine`,
  installed with progress (see `install.py`).
- StartEngine / StopEngine: StartEngine loads the default model in the background
  (so the first request does not pay for it); StopEngine stops every engine process.
- Models: pull (streamed progress), list, delete, load (start an engine process for
  the model), unload (stop it, which really frees its memory), running.
- Health: a crashed engine process is noticed at once (its exit is awaited), reported
  by HealthCheck and in every request's error, and restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import attrs
import httpx

from aogstream import manifest as m
from aogstream.engines.install import EngineEnv, EngineSpec
from aogstream.engines.models import ModelStore, PackageModel, StoredModel, check_name
from aogstream.engines.paths import plugin_data_dir
from aogstream.engines.process import EngineProcess, free_port, rss_bytes
from aogstream.errors import without_paths
from aogstream.sdk.provider import LocalPluginProvider, StreamablePlugin

log = logging.getLogger("aogstream.engines")
WORKER_KIT = Path(__file__).parent / "worker_kit"
MAX_BACKOFF_S = 30.0


@attrs.define
class Loaded:
    """A model with an engine process (or one starting / restarting)."""

    model: StoredModel
    engine: EngineProcess | None = None
    ready: asyncio.Event = attrs.Factory(asyncio.Event)
    error: m.PluginError | None = None
    restarts: int = 0
    watcher: asyncio.Future[None] | None = None
    unloading: bool = False


class EnginePlugin(LocalPluginProvider, StreamablePlugin):
    ENGINE: EngineSpec
    CATALOG: list[PackageModel] = []
    DEFAULT_MODEL: str = ""
    HEALTH_PATH = "/health"
    START_TIMEOUT_S = 180.0

    def __init__(self, plugin_dir: Path, name: str) -> None:
        self.plugin_dir = plugin_dir
        self.name = name
        self.data_dir = plugin_data_dir(name, plugin_dir)
        self.env = EngineEnv(self.data_dir, self.ENGINE)
        self.store = ModelStore(self.data_dir)
        self.loaded: dict[str, Loaded] = {}
        self.started = False
        self.threads = int(os.environ.get("AOGSTREAM_ENGINE_THREADS") or os.cpu_count() or 2)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0),
                                      limits=httpx.Limits(max_keepalive_connections=32))
        self._bg: set[asyncio.Future[None]] = set()
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per call is noise

    # ---- what a subclass provides ----

    def engine_argv(self, model: StoredModel, port: int) -> list[str]:
        """The command that serves `model` on 127.0.0.1:`port`."""
        raise NotImplementedError

    def worker(self, script: str, model_path: Path, port: int, name: str,
               *extra: str) -> list[str]:
        """argv for a worker script of this plugin run by the engine's Python."""
        return [str(self.env.python), str(self.plugin_dir / script), "--port", str(port),
                "--model", str(model_path), "--name", name, "--threads", str(self.threads),
                *extra]

    def engine_environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PLUGIN_", "AOG_PLUGIN", "PYTHON"))}
        env["PYTHONPATH"] = str(WORKER_KIT)
        env["PYTHONUNBUFFERED"] = "1"
        env["OMP_NUM_THREADS"] = str(self.threads)
        return env

    def source_companions(self, source: str) -> list[str]:
        """Files that must come along with a model named by path or URL."""
        return []

    def source_details(self, source: str) -> dict[str, Any]:
        return {}

    # ---- engine lifecycle ----

    async def check_engine(self) -> bool:
        return self.env.installed()

    async def install_engine(self, cover: bool = False) -> None:
        await self.env.install(cover)

    async def init_env(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    async def upgrade_engine(self) -> None:
        """Pinned packages: an upgrade is a reinstall when the pins changed."""
        if not self.env.installed() and self.env.stamp.exists():
            await self.env.install(cover=True)

    async def start_engine(self, mode: str) -> None:
        self._require_installed()
        self.started = True
        default = self.default_model()
        if default and self.store.get(default) is not None:
            # warm the default model without holding up the host's StartEngine call
            self._spawn(self._load_quietly(default))

    async def stop_engine(self) -> None:
        self.started = False
        await asyncio.gather(*(self._unload(name) for name in list(self.loaded)),
                             return_exceptions=True)

    async def health_check(self) -> None:
        if not self.env.installed():
            raise m.PluginError(m.ERR_CODE_ENGINE_NOT_INSTALLED, self._install_hint(), "")
        for name, item in self.loaded.items():
            if item.error is not None:
                raise m.PluginError(m.ERR_CODE_ENGINE_HEALTH_CHECK_FAILED,
                                    f"engine for {name!r} is down: {item.error.message}", "")

    async def get_version(self) -> m.EngineVersionResponse:
        self._require_installed()
        want = self.ENGINE.version_of or re.split(r"[\[=<>]", self.ENGINE.packages[0])[0]
        for dist in importlib.metadata.distributions(path=[str(self.env.site_packages())]):
            if dist.metadata["Name"].lower().replace("_", "-") == want.lower():
                return m.EngineVersionResponse(version=dist.version)
        return m.EngineVersionResponse(version="unknown")

    async def get_config(self) -> m.EngineRecommendConfig:
        return m.EngineRecommendConfig(
            host="127.0.0.1", origin="127.0.0.1", scheme="http",
            recommend_model=self.default_model(), download_url="",
            download_path=str(self.store.root), engine_path=str(self.env.venv),
            exec_path=str(self.env.python.parent), exec_file=str(self.env.python),
            device_type="cpu")

    # ---- models ----

    def default_model(self) -> str:
        if self.manifest is not None:
            for svc in self.manifest.services:
                if svc.default_model:
                    return svc.default_model
        return self.DEFAULT_MODEL

    def catalog_entry(self, name: str) -> PackageModel | None:
        return next((c for c in self.CATALOG if c.name == name), None)

    async def pull_model_stream(self, req: m.PullModelRequest) -> AsyncIterator[dict[str, Any]]:
        what = req.model or req.name
        if not what:
            raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT, "name the model to pull", "")
        pkg = self.catalog_entry(what)
        if pkg is not None:
            name = check_name(req.name or what)
            pull = self.store.pull(name, package=pkg)
        else:
            # a request's path is taken as it is: never `~`-expanded, never relative
            if not (re.match(r"^https?://", what)
                    or (Path(what).is_absolute() and Path(what).exists())):
                known = ", ".join(c.name for c in self.CATALOG) or "none"
                raise m.PluginError(
                    m.ERR_CODE_MODEL_NOT_FOUND,
                    f"unknown model {what!r}: {self.name} knows {known}; or name a local "
                    f"file/folder path (absolute) or an http(s) URL of a model file", "")
            stem = re.sub(r"(\.[A-Za-z0-9]+)+$", "", what.rstrip("/").rsplit("/", 1)[-1])
            name = check_name(req.name or stem)
            pull = self.store.pull(name, source=what, details=self.source_details(what),
                                   companions=self.source_companions)
        async for event in pull:
            yield event

    async def delete_model(self, req: m.DeleteModelRequest) -> None:
        await self._unload(req.model)
        self.store.delete(req.model)

    async def list_models(self) -> m.ListModelsResponse:
        return m.ListModelsResponse(models=[s.info() for s in self.store.all()])

    async def load_model(self, req: m.LoadModelRequest) -> None:
        await self.engine_for(req.model or None)

    async def unload_model(self, req: m.UnloadModelRequest) -> None:
        for name in req.models:
            await self._unload(name)

    async def get_running_models(self) -> m.ListModelsResponse:
        infos = []
        for item in self.loaded.values():
            if item.engine is not None and item.engine.alive() and item.ready.is_set():
                info = item.model.info()
                infos.append(info)
        return m.ListModelsResponse(models=infos)

    def engine_pids(self) -> dict[str, int]:
        return {n: i.engine.pid for n, i in self.loaded.items()
                if i.engine is not None and i.engine.pid is not None}

    def engine_rss(self) -> dict[str, int]:
        return {n: rss_bytes(pid) for n, pid in self.engine_pids().items()}

    # ---- getting an engine for a request ----

    async def engine_for(self, model: str | None) -> tuple[str, EngineProcess]:
        """The running engine for `model` (default model when None), loading it if
        needed. Errors say what is missing and how to get it."""
        name = model or self.default_model()
        self._require_installed()
        item = self.loaded.get(name)
        if item is None:
            stored = self.store.get(check_name(name))
            if stored is None:
                raise m.PluginError(
                    m.ERR_CODE_MODEL_NOT_FOUND,
                    f"model {name!r} is not pulled on {self.name}; pull it first "
                    f"(aogstream engine install {self.name} pulls the default model)", "")
            item = Loaded(stored)
            self.loaded[name] = item
            item.watcher = self._spawn(self._run_engine(name, item))
        if not item.ready.is_set():
            await item.ready.wait()
        if item.error is not None or item.engine is None or not item.engine.alive():
            err = item.error or m.PluginError(m.ERR_CODE_UNAVAILABLE,
                                              f"engine for {name!r} is restarting", "")
            if item.restarts == 0 and item.watcher is not None and item.watcher.done():
                self.loaded.pop(name, None)  # a failed first start: let the next try again
            raise err
        return name, item.engine

    async def _run_engine(self, name: str, item: Loaded) -> None:
        """Start the engine; when it dies unexpectedly, report and restart it."""
        backoff = 1.0
        while not item.unloading:
            port = free_port()
            engine = EngineProcess(f"{self.name}/{name}", self.engine_argv(item.model, port),
                                   port=port, health_path=self.HEALTH_PATH,
                                   env=self.engine_environ(), cwd=self.data_dir)
            item.engine = engine
            try:
                await engine.start(self.START_TIMEOUT_S)
            except m.PluginError as exc:
                log.error("%s: %s\n%s", self.name, exc.message, exc.details)
                item.error = exc
                item.ready.set()
                if item.restarts == 0:
                    return  # a model that never starts is an error for the caller
            else:
                item.error = None
                item.ready.set()
                backoff = 1.0 if time.monotonic() - engine.started_at > 60 else backoff
                code = await engine.wait()
                if item.unloading or engine.stopping:
                    return
                item.error = m.PluginError(
                    m.ERR_CODE_UNAVAILABLE,
                    f"the engine for {name!r} crashed (exit {code}); {self.name} is restarting "
                    f"it — retry in a few seconds", "\n".join(engine.tail))
                log.error("%s: %s", self.name, item.error.message)
            item.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            item.ready.clear()

    async def _load_quietly(self, name: str) -> None:
        try:
            await self.engine_for(name)
        except m.PluginError as exc:
            log.warning("%s: could not preload %s: %s", self.name, name, exc.message)

    async def _unload(self, name: str) -> None:
        item = self.loaded.pop(name, None)
        if item is None:
            return
        item.unloading = True
        if item.engine is not None:
            await item.engine.stop()
        if item.watcher is not None:
            item.watcher.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
        fut = asyncio.ensure_future(coro)
        self._bg.add(fut)
        fut.add_done_callback(self._bg.discard)
        return fut

    def _install_hint(self) -> str:
        return (f"the engine of {self.name} ({self.ENGINE.name}) is not installed; run "
                f"`aogstream engine install {self.name}` (or the host's InstallEngine)")

    def _require_installed(self) -> None:
        if not self.env.installed():
            raise m.PluginError(m.ERR_CODE_ENGINE_NOT_INSTALLED, self._install_hint(), "")

    # ---- talking to an engine ----

    def engine_failed(self, name: str, exc: Exception) -> m.PluginError:
        return m.PluginError(
            m.ERR_CODE_UNAVAILABLE,
            f"the engine for {name!r} failed during the request ({type(exc).__name__}); "
            f"if it crashed, {self.name} restarts it — retry in a few seconds", str(exc))

    async def post_json(self, name: str, engine: EngineProcess, path: str,
                        body: dict[str, Any], label: str = "") -> Any:
        try:
            r = await self.http.post(engine.base_url + path, json=body)
        except httpx.TransportError as exc:
            raise self.engine_failed(name, exc) from exc
        if r.status_code != 200:
            raise engine_error(r.status_code, r.content, label)
        return r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else r.content

    async def post_ndjson(self, name: str, engine: EngineProcess, path: str,
                          body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Each line the engine streams, as it arrives; leaving the loop hangs up,
        which stops the engine's work."""
        try:
            async with self.http.stream("POST", engine.base_url + path, json=body) as r:
                if r.status_code != 200:
                    raise engine_error(r.status_code, await r.aread())
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    item = json.loads(line)
                    if "error" in item:
                        raise m.PluginError(m.ERR_CODE_INTERNAL,
                                            without_paths(str(item["error"])), "")
                    yield item
        except httpx.TransportError as exc:
            raise self.engine_failed(name, exc) from exc


def engine_error(status: int, body: bytes, label: str = "") -> m.PluginError:
    """The engine's own message, from `{"error": "..."}`, `{"error": {"message"}}` or
    FastAPI's `{"detail": ...}` (a list of field errors for a 422); a 4xx becomes
    INVALID_ARGUMENT (the caller's mistake), anything else INTERNAL. The message goes to
    the client, so the folders of any absolute path in it (a model file, the data
    directory, a traceback line) are dropped: an engine names its files freely."""
    message = body.decode(errors="replace")[:500]
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        obj = json.loads(body)
        err = obj.get("error") or obj.get("detail")
        if isinstance(err, dict):
            message = str(err.get("message") or err)
        elif isinstance(err, list):
            message = "; ".join(
                f"{'.'.join(str(p) for p in (e.get('loc') or [])[1:])}: {e.get('msg')}"
                for e in err if isinstance(e, dict)) or message
        elif err:
            message = str(err)
    code = m.ERR_CODE_INVALID_ARGUMENT if 400 <= status < 500 else m.ERR_CODE_INTERNAL
    message = without_paths(message)
    return m.PluginError(code, f"{label}: {message}" if label else message, "")


def request_json(request: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or an INVALID_ARGUMENT error saying why not."""
    try:
        body = json.loads(request or b"{}")
    except json.JSONDecodeError as exc:
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            f"request body is not valid JSON: {exc}", "") from exc
    if not isinstance(body, dict):
        raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                            "request body must be a JSON object", "")
    return body


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
