"""A loaded native plugin: one library for the life of the gateway.

`NativePlugin` registers it (`plugin.register` with the normalized YAML config, schema
3), asks for its models (`model.static` for a model provider, else `model.register`),
settles which formats its executor is spoken to in (`negotiation`), and runs every
later call on a worker thread (`offload.Offload`, under a per-plugin limiter, so many
calls run at once and the trio loop never blocks). A call whose request is
cancelled is abandoned: the thread finishes the native call and frees its answer on its
own, as CPA does. What serves requests with it is `provider.NativeProvider`.

With `isolation: process` the library runs in a host process of ours
(`isolated.IsolatedLibrary`, the same interface): when that process dies, the calls in
flight fail with a 502 saying so, open streams end with that error, and the process is
restarted with back-off and registered again with the same config; a crash loop
(`FUSE_CRASHES` within `FUSE_WINDOW`) is not restarted again and the plugin is listed
as failed, saying why.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import trio

from aogstream import errors
from aogstream.convert import formats
from aogstream.host.native import gojson as gj
from aogstream.host.native.abi import CallError, Crashed, LoadError, NativeLibrary
from aogstream.host.native.callbacks import HostServices
from aogstream.host.native.isolated import IsolatedLibrary
from aogstream.host.native.negotiation import negotiate, normalize_format
from aogstream.host.native.offload import Offload

log = logging.getLogger("aogstream.native")

SCHEMA_VERSION = 3
CALL_LIMIT = 64  # native calls in flight per plugin (each holds a thread)
LOAD_TIMEOUT = 30.0
IN_PROCESS, PROCESS = "in-process", "process"  # `plugins.configs.<id>.isolation`
RESTART_DELAY = 0.25  # s before the first restart of a crashed host process; doubles
RESTART_MAX_DELAY = 30.0
FUSE_CRASHES = 5  # this many crashes within FUSE_WINDOW s: not restarted again
FUSE_WINDOW = 60.0
# the providers whose thinking settings CPA applies itself: no thinking applier takes them
NATIVE_PROVIDERS = ("gemini", "claude", "openai", "codex", "antigravity", "kimi", "xai")
UNTRANSLATED = "executor formats"  # how the reason for an unused executor starts
NATIVE_DESC = "native plugin "  # its store rows' description starts so (see loader)
CAPABILITIES = (
    "model_registrar", "model_provider", "auth_provider", "frontend_auth_provider",
    "frontend_auth_provider_exclusive", "scheduler", "model_router", "executor",
    "request_translator", "request_normalizer", "request_interceptor",
    "request_lifecycle_plugin", "response_translator", "response_before_translator",
    "response_after_translator", "response_interceptor", "response_stream_interceptor",
    "thinking_applier", "usage_plugin", "command_line_plugin", "management_api",
)


def metadata_object(meta: dict[str, Any]) -> dict[str, Any]:
    """`pluginapi.Metadata` in Go field order (what `Plugin` fields carry)."""
    fields = gj.field(meta, "ConfigFields")
    return {
        "Name": gj.text(meta, "Name"), "Version": gj.text(meta, "Version"),
        "Author": gj.text(meta, "Author"),
        "GitHubRepository": gj.text(meta, "GitHubRepository"), "Logo": gj.text(meta, "Logo"),
        "ConfigFields": [{"Name": gj.text(f, "Name"), "Type": gj.text(f, "Type"),
                          "EnumValues": gj.field(f, "EnumValues"),
                          "Description": gj.text(f, "Description")}
                         for f in fields if isinstance(f, dict)]
        if isinstance(fields, list) else None,
    }


HOST_SUMMARY = {"AuthDir": "", "ProxyURL": "", "ForceModelPrefix": False,
                "OAuthModelAlias": None, "ExcludedModels": None}


def plugin_error(plugin: str, method: str, exc: Exception) -> errors.GatewayError:
    """A failed call as the error a client sees; a plugin's `http_status` is kept."""
    if isinstance(exc, gj.EnvelopeError):
        status = exc.http_status
        if 400 <= status < 600:
            code = 100403 if status < 500 else 100401
            return errors.GatewayError(errors.Bcode(status, code),
                                       f"native plugin {plugin}: {exc.message}")
        return errors.GatewayError(errors.PLUGIN_SERVICE_ERROR,
                                   f"native plugin {plugin}: {exc.message}")
    if isinstance(exc, gj.ReplyError | Crashed):  # a crash: 502, like a broken upstream
        return errors.GatewayError(errors.PLUGIN_SERVICE_ERROR,
                                   f"native plugin {plugin}: {exc}")
    return errors.GatewayError(errors.PLUGIN_UNAVAILABLE, f"native plugin {plugin}: {exc}")


class NativePlugin:
    """One plugin library: its registration, models, executor and calls."""

    def __init__(self, plugin_id: str, path: Path, config_yaml: bytes, priority: int,
                 host: HostServices, lifecycle: trio.Lock,
                 isolation: str = IN_PROCESS) -> None:
        self.id = plugin_id
        self.isolation = isolation
        self.path = path
        self.config_yaml = config_yaml
        self.priority = priority
        self.host = host
        self.state = "stopped"
        self.last_error = ""
        self.schema_version = 0
        self.metadata: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.provider_key = ""
        self.auth_identifier = ""  # auth.identifier of an auth provider
        self.thinking_key = ""  # thinking.identifier of a thinking applier ("" = none)
        self.models: list[str] = []  # the static models, then the per-auth ones
        self.static_models: list[str] = []  # model.static / model.register
        # model.for_auth (`auth_models`): record name → its models, and the file asked
        self.auth_models: dict[str, list[str]] = {}
        self.auth_seen: dict[str, bytes] = {}
        self.executor_format = ""  # the request format it is sent; "" = no usable executor
        self.executor_output = ""  # the answer format it is read in
        # the executor's declared (input, output) formats, CPA's aliases resolved
        self.declared_formats: tuple[list[str], list[str]] = ([], [])
        # management.register's answer (`host.native.management`): routes and resources
        self.routes: dict[tuple[str, str], dict[str, str]] = {}
        self.resources: dict[str, dict[str, str]] = {}
        self.offload = Offload(CALL_LIMIT)  # the worker threads of its calls
        self._lifecycle = lifecycle
        self.restarts = 0  # host processes restarted after a crash (isolation: process)
        self._crashes: list[float] = []  # when they crashed (monotonic), recent ones
        self._retired = False  # shut down: a crash is no longer restarted
        self.lib: NativeLibrary | IsolatedLibrary = self._library()

    @property
    def isolated(self) -> bool:
        return self.isolation == PROCESS

    def _library(self) -> NativeLibrary | IsolatedLibrary:
        if self.isolated:
            return IsolatedLibrary(self.path, self._on_host_call, self.id, self._on_exit,
                                   self._on_host_call_nowait)
        return NativeLibrary(self.path, self._on_host_call)

    @property
    def live(self) -> bool:
        """Running, or restarting its host process: `shutdown` has work to do."""
        return self.state in ("running", "restarting")

    def _on_host_call(self, method: str, data: bytes) -> bytes | None:
        return self.host.handle(self.id, method, data)

    def _on_host_call_nowait(self, method: str, data: bytes) -> bytes | None:
        return self.host.handle_nowait(self.id, method, data)

    # ---- calls -------------------------------------------------------------------------

    async def call_raw(self, method: str, request: dict[str, Any]) -> Any:
        """One call on a worker thread; the reply's `result` (raises what `gojson`
        and `abi` raise)."""
        payload = gj.dumps(request)
        raw = await self.offload.run(self.lib.call, method, payload)
        try:
            return gj.envelope_result(raw)
        except gj.ReplyError as exc:
            raise gj.ReplyError(f"{method} answered {exc}") from None

    async def call(self, method: str, request: dict[str, Any]) -> Any:
        """`call_raw` with failures as `GatewayError`s a client may see."""
        try:
            return await self.call_raw(method, request)
        except (gj.EnvelopeError, gj.ReplyError, CallError) as exc:
            raise plugin_error(self.id, method, exc) from None

    # ---- lifecycle -----------------------------------------------------------------------

    async def load(self) -> None:
        """Open, register and describe the plugin; `state` "running" or "failed" with
        `last_error` saying why (also logged)."""
        try:
            with trio.fail_after(LOAD_TIMEOUT):
                await self._open_and_register()
        except trio.TooSlowError:
            self._fail(f"did not finish loading within {LOAD_TIMEOUT:g} s")
        except (LoadError, CallError, gj.ReplyError, gj.EnvelopeError, ValueError) as exc:
            self._fail(str(exc))
        else:
            self.state = "running"
            self._check_alive()
            if gj.boolean(self.capabilities, "frontend_auth_provider"):
                log.warning("native plugin %s authenticates clients: service requests now "
                            "pass only when a frontend-auth plugin accepts them%s", self.id,
                            " (exclusive: client API keys alone no longer pass)"
                            if gj.boolean(self.capabilities,
                                          "frontend_auth_provider_exclusive") else
                            " or carry a client API key")
            log.info("native plugin %s loaded from %s: %s %s, models %s", self.id,
                     self.path.name, gj.text(self.metadata, "Name"),
                     gj.text(self.metadata, "Version"), ", ".join(self.models) or "none")

    async def _open_and_register(self) -> None:
        lib = self.lib
        if isinstance(lib, IsolatedLibrary):
            lib.spawn()  # on the loop's thread, which outlives it (see `isolated`)
        await trio.to_thread.run_sync(lib.open, abandon_on_cancel=True)
        async with self._lifecycle:  # register/reconfigure never overlap
            reply = await self.call_raw("plugin.register", {
                "config_yaml": self.config_yaml, "schema_version": SCHEMA_VERSION})
        self._accept_registration(reply)
        await self._load_models()
        await self._identify()
        await self._auth_models()

    # ---- isolation: process — a crashed host process ----------------------------------

    def _on_exit(self, why: str) -> None:
        """The host process ended unasked (a thread of `isolated`): over to the loop."""
        try:
            self.host.token.run_sync_soon(self._crashed, why)
        except trio.RunFinishedError:
            pass

    def _count_crash(self) -> int:
        now = time.monotonic()
        self._crashes = [t for t in self._crashes if now - t < FUSE_WINDOW] + [now]
        return len(self._crashes)

    def _fuse(self, why: str) -> bool:
        """Stop restarting after too many crashes in a row; True when fused."""
        if len(self._crashes) < FUSE_CRASHES:
            return False
        self.state = "failed"
        self.last_error = (f"the native code crashed {len(self._crashes)} times within "
                           f"{FUSE_WINDOW:g} s (last: {why}); it is not restarted again: "
                           f"fix the library, then disable and enable the plugin")
        log.error("native plugin %s: %s", self.id, self.last_error)
        return True

    def _crashed(self, why: str) -> None:
        """On the loop: end the plugin's open streams with the crash, then restart its
        host process with back-off (or stop, when it crash-loops)."""
        if self._retired or self.state != "running":
            return  # a load or a restart under way handles its own failure
        self._count_crash()
        self.host.end_streams(self.id, f"its native code crashed ({why}) and is being "
                                       f"restarted")
        if self._fuse(why):
            return
        self.state = "restarting"
        self.last_error = f"its native code crashed ({why})"
        trio.lowlevel.spawn_system_task(self._restart, name=f"native {self.id} restart")

    async def _restart(self) -> None:
        """New host processes, with a doubling delay, until one registers (then
        `running` again) or the plugin is retired or fused."""
        while not self._retired:
            await trio.sleep(min(RESTART_MAX_DELAY,
                                 RESTART_DELAY * 2 ** (len(self._crashes) - 1)))
            if self._retired:
                return
            old, self.lib = self.lib, self._library()
            del old  # reaped by its reader thread
            # the formats the loader settled (with the translator plugins it knew of):
            # the same library declares the same ones, so they stand after the restart
            settled = (self.declared_formats, self.executor_format, self.executor_output)
            try:
                with trio.fail_after(LOAD_TIMEOUT):
                    await self._open_and_register()
            except (trio.TooSlowError, LoadError, CallError, gj.ReplyError,
                    gj.EnvelopeError, ValueError) as exc:
                why = f"did not finish loading within {LOAD_TIMEOUT:g} s" \
                    if isinstance(exc, trio.TooSlowError) else str(exc)
                lib = self.lib
                if isinstance(lib, IsolatedLibrary):
                    await trio.to_thread.run_sync(lib.kill)
                self._count_crash()
                log.error("native plugin %s: restarting its host process failed: %s",
                          self.id, why)
                if self._fuse(why):
                    return
                continue
            if self._retired:  # shut down while it restarted
                await trio.to_thread.run_sync(self.lib.shutdown, 1.0)
                return
            if self.declared_formats == settled[0]:
                self.executor_format, self.executor_output = settled[1], settled[2]
            await self._register_management_again()
            self.restarts += 1
            self.state = "running"
            if self.executor_format or not self.last_error.startswith(UNTRANSLATED):
                self.last_error = ""  # the crash is over (an unused executor says so still)
            log.info("native plugin %s: host process restarted (pid %s, restart %d)",
                     self.id, getattr(self.lib, "pid", None), self.restarts)
            self._check_alive()
            return

    def _check_alive(self) -> None:
        """A process that died while it was being loaded (its end was not a crash of a
        running plugin then) is handled as one now."""
        lib = self.lib
        if isinstance(lib, IsolatedLibrary) and lib.ended:
            self._crashed(lib.ended)

    async def _register_management_again(self) -> None:
        """`management.register` in the new process, as at load; it keeps at most the
        routes and resources it had (others may have taken the rest since)."""
        if not (self.routes or self.resources):
            return
        from aogstream.host.native import management

        routes, resources = self.routes, self.resources
        await management.refresh(self, set())
        self.routes = {k: v for k, v in self.routes.items() if k in routes}
        self.resources = {k: v for k, v in self.resources.items() if k in resources}

    async def reconfigure(self, config_yaml: bytes, priority: int) -> None:
        """`plugin.reconfigure` with fresh YAML (spec §6: a loaded plugin whose config
        changed), then its models again; raises what `load` catches."""
        async with self._lifecycle:
            try:
                reply = await self.call_raw("plugin.reconfigure", {
                    "config_yaml": config_yaml, "schema_version": SCHEMA_VERSION})
            except Crashed:  # its restart registers it with the new config
                self.config_yaml, self.priority = config_yaml, priority
                raise
        self.executor_format = self.executor_output = ""
        self._accept_registration(reply)
        self.config_yaml, self.priority = config_yaml, priority
        await self._load_models()
        await self._identify()
        await self._auth_models()

    async def _identify(self) -> None:
        """An auth provider's key (`auth.identifier`, lower-cased), and a thinking
        applier's (`thinking.identifier`; a native provider's name is refused)."""
        if gj.boolean(self.capabilities, "auth_provider"):
            reply = await self.call_raw("auth.identifier", {})
            self.auth_identifier = gj.text(reply, "identifier").strip().lower()
        self.thinking_key = ""
        if gj.boolean(self.capabilities, "thinking_applier"):
            reply = await self.call_raw("thinking.identifier", {})
            key = gj.text(reply, "identifier").strip().lower()
            if key in NATIVE_PROVIDERS:
                log.warning("native plugin %s: its thinking applier names provider %s, "
                            "whose thinking the gateway applies itself; it is not used",
                            self.id, key)
            elif not key:
                log.warning("native plugin %s: thinking.identifier named no provider; "
                            "its thinking applier is not used", self.id)
            else:
                self.thinking_key = key

    async def _auth_models(self) -> None:
        """`model.for_auth` for every record of its provider (module `auth_models`)."""
        from aogstream.host.native import auth_models

        self.auth_models, self.auth_seen = {}, {}
        if self.host.auths is not None:
            await auth_models.rediscover(self, self.host.auths, every=True)

    @property
    def auth_key(self) -> str:
        """The provider key its auth records carry (`type`)."""
        return self.provider_key or self.auth_identifier

    def _fail(self, why: str) -> None:
        self.state, self.last_error = "failed", why
        log.error("native plugin %s (%s) not loaded: %s", self.id, self.path.name, why)
        if isinstance(self.lib, IsolatedLibrary):
            self.lib.kill()
        elif not self.lib._closed:
            self.lib.shutdown(drain_timeout=1.0)

    def _accept_registration(self, reply: Any) -> None:
        if not isinstance(reply, dict):
            raise gj.ReplyError("plugin.register returned no object")
        version = gj.integer(reply, "schema_version") or 1
        if version > SCHEMA_VERSION:
            raise ValueError(f"plugin schema version {version} is not supported "
                             f"(this host speaks {SCHEMA_VERSION})")
        meta = gj.field(reply, "metadata", {})
        caps = gj.field(reply, "capabilities", {})
        if not isinstance(meta, dict) or not isinstance(caps, dict):
            raise gj.ReplyError("plugin.register: metadata and capabilities must be objects")
        missing = [k for k in ("Name", "Version", "Author", "GitHubRepository")
                   if not gj.text(meta, k)]
        if missing:
            raise ValueError(f"plugin.register: metadata lacks {', '.join(missing)}")
        if not any(gj.boolean(caps, c) for c in CAPABILITIES):
            raise ValueError("plugin.register: the plugin declares no capability")
        self.schema_version, self.metadata, self.capabilities = version, meta, caps
        self.declared_formats = ([], [])
        if gj.boolean(caps, "executor"):
            ins = [normalize_format(str(f)) for f in gj.field(caps, "executor_input_formats", [])
                   if isinstance(f, str)]
            outs = [normalize_format(str(f))
                    for f in gj.field(caps, "executor_output_formats", []) if isinstance(f, str)]
            self.declared_formats = ([f for f in ins if f and f != "none"],
                                     [f for f in outs if f and f != "none"])
            self.settle_formats(False, False)

    def settle_formats(self, plugin_requests: bool, plugin_answers: bool) -> bool:
        """Choose the executor's formats (`negotiation.negotiate`), given whether some
        loaded plugin translates requests / answers; an executor no translator reaches
        keeps a reason in `last_error` (the plugin list shows it). True when the
        choice changed."""
        ins, outs = self.declared_formats
        before = (self.executor_format, self.executor_output)
        chosen = negotiate(ins, outs, plugin_requests=plugin_requests,
                           plugin_answers=plugin_answers)
        if chosen is not None:
            self.executor_format, self.executor_output = chosen
            if self.last_error.startswith(UNTRANSLATED):
                self.last_error = ""
        else:
            self.executor_format = self.executor_output = ""
            why = (f"{UNTRANSLATED} in {ins or 'none'} / out {outs or 'none'}: aogstream "
                   f"translates {', '.join(formats.TRANSLATED)} and no loaded plugin "
                   f"translates the others, so the executor is not used")
            if why != self.last_error:
                self.last_error = why
                log.warning("native plugin %s: %s", self.id, why)
        return (self.executor_format, self.executor_output) != before

    async def _load_models(self) -> None:
        plugin = metadata_object(self.metadata)
        self.models, self.static_models = [], []
        if gj.boolean(self.capabilities, "model_provider"):
            scope = gj.text(self.capabilities, "executor_model_scope").lower()
            if scope == "oauth":  # its models are the per-auth ones (model.for_auth)
                return
            reply = await self.call_raw("model.static", {"Plugin": plugin, "Host": HOST_SUMMARY})
        elif gj.boolean(self.capabilities, "model_registrar"):
            reply = await self.call_raw("model.register", {"Plugin": plugin})
        else:
            return
        self.provider_key = gj.text(reply, "Provider").lower()
        names: list[str] = []
        for info in gj.field(reply, "Models", []) or []:
            name = gj.text(info, "ID") or gj.text(info, "Name")
            if name and name not in names:
                names.append(name)
        self.models, self.static_models = names, list(names)

    async def shutdown(self) -> None:
        """Drain calls in flight (bounded), then the plugin's own `shutdown()`."""
        self.state = "stopped"
        self._retired = True
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self.lib.shutdown)

    def entry(self, enabled: bool) -> dict[str, Any]:
        """The plugin in `/aog/v0.2/plugin/list`."""
        services = ["chat"] if self.executor_format and self.state == "running" else []
        return {"name": self.id, "provider_name": gj.text(self.metadata, "Name") or self.id,
                "services": services,
                "status": {"running": 1, "failed": 0}.get(self.state, 0),
                "version": gj.text(self.metadata, "Version"),
                # the CLI's list shows this column: say why a plugin does not serve
                "description": f"native plugin {self.path.name}"
                + (f": {self.last_error}" if self.last_error else
                   f" by {gj.text(self.metadata, 'Author')}"),
                "state": self.state,
                "pid": self.lib.pid if isinstance(self.lib, IsolatedLibrary) else None,
                "restarts": self.restarts, "isolation": self.isolation,
                "last_error": self.last_error, "enabled": enabled, "type": "native",
                "plugin_version": gj.text(self.metadata, "Version"), "dir": "",
                "kind": "native", "file": self.path.name, "priority": self.priority,
                "models": list(self.models)}
