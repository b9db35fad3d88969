"""Model pulls, and the model rows they leave: list, pull, cancel and delete models.

Why pulls are jobs in the gateway's nursery and not work in the HTTP request: a pull
outlives a client that only asked for it in the background (`POST /model`), several
clients may watch one pull, and `/model/stream/cancel` can reach it from another
request. A job's store row goes downloading → downloaded | failed; a canceled pull
leaves no row behind (unless the model was already downloaded before). Deleting a model
lives here too because it must refuse a model that is being pulled.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import attrs
import trio

from aogstream import errors, status
from aogstream import manifest as m
from aogstream.errors import (
    MODEL_BAD,
    MODEL_BUSY,
    MODEL_ENGINE_DELETE,
    MODEL_NOT_FOUND,
    GatewayError,
)
from aogstream.gateway import Gateway
from aogstream.host.process import PluginSupervisor
from aogstream.management.shared import GatewayAccess, names, need
from aogstream.observe import record as observed
from aogstream.rpc.bridge import RpcFailure
from aogstream.store import ModelRow, ProviderRow
from aogstream.store.base import ModelStatus

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")  # as plugins store them


class PullOutcome(enum.StrEnum):
    """How a pull ended (also the `status` of its last progress event)."""

    SUCCESS = "success"
    ERROR = "error"
    CANCELED = "canceled"


def model_name_for_url(url: str) -> str:
    """The name of a model pulled from `url`: its file name without extensions
    (`https://host/voices/en_US-joe.onnx?dl=1` → `en_US-joe`), as the local plugins store
    a URL's model."""
    stem = re.sub(r"(\.[A-Za-z0-9]+)+$", "",
                  urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    if not MODEL_NAME.match(stem):
        raise GatewayError(MODEL_BAD, f"cannot name a model after {url!r}: its file name "
                                      f"{stem!r} is not a model name (letters, digits and "
                                      f". _ : + -); give a URL that ends in the model's file")
    return stem


class _PullFailed(Exception):
    """A pull ended without success (the message is shown to the user)."""


@attrs.define(eq=False)
class PullJob:
    """One model pull in flight, watched by zero or more progress streams."""

    provider: ProviderRow
    model_name: str
    service_name: str
    background: bool
    was_downloaded: bool = False
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)
    outcome: PullOutcome | None = None  # None while it runs
    error: str = ""
    cancel_reason: str = ""
    source: str = ""  # the URL a model named after it is pulled from
    watchers: list[trio.MemorySendChannel[dict[str, Any]]] = attrs.Factory(list)

    @property
    def key(self) -> tuple[str, str]:
        return self.provider.provider_name, self.model_name

    def watch(self) -> trio.MemoryReceiveChannel[dict[str, Any]]:
        send, recv = trio.open_memory_channel[dict[str, Any]](math.inf)
        if self.done.is_set():
            send.close()
        else:
            self.watchers.append(send)
        return recv

    def unwatch(self, recv: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        """A watcher left. A pull only a stream asked for is not worth finishing when
        nobody watches it any more (the client disconnected)."""
        recv.close()
        self.watchers = [w for w in self.watchers if not _closed(w)]
        if not self.watchers and not self.background and not self.done.is_set():
            self.cancel("the client that asked for it went away")

    def publish(self, event: dict[str, Any]) -> None:
        for w in list(self.watchers):
            try:
                w.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.watchers.remove(w)

    def cancel(self, reason: str) -> None:
        if not self.cancel_reason:
            self.cancel_reason = reason
        self.scope.cancel()

    def finish(self) -> None:
        for w in self.watchers:
            w.close()
        self.watchers.clear()
        self.done.set()


def _closed(send: trio.MemorySendChannel[Any]) -> bool:
    try:
        return send.statistics().open_receive_channels == 0
    except trio.ClosedResourceError:
        return True


class ModelPulls(GatewayAccess):
    """The model operations of one running gateway, and its pulls in flight."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self._jobs: dict[tuple[str, str], PullJob] = {}
        # a pull that was running when the gateway last stopped did not finish
        for row in self.store.models():
            if row.status == ModelStatus.DOWNLOADING:
                row.status = ModelStatus.FAILED
                self.store.put_model(row)

    def cancel_where(self, which: Callable[[PullJob], bool], reason: str) -> None:
        """Cancel the pulls in flight that `which` picks (their provider or plugin is
        going away)."""
        for job in list(self._jobs.values()):
            if which(job):
                job.cancel(reason)

    async def list_models(self, provider_name: str = "", model_name: str = "",
                          service_name: str = "") -> list[dict[str, Any]]:
        rows = await self.db(lambda: self.store.models(
            provider_name=provider_name, model_name=model_name, service_name=service_name))
        providers = {p.provider_name: p for p in await self.db(self.store.providers)}
        return [status.model_public(self.gw, r, providers) for r in rows]

    async def _pull_provider(self, provider_name: str, model_name: str, service_name: str,
                             service_source: str) -> ProviderRow:
        """The provider a pull goes to: the named one, else the service's provider that
        declares the model (local first unless service_source says remote)."""
        if provider_name:
            row = await self.provider_row(provider_name, MODEL_NOT_FOUND)
            if service_name and service_name != row.service_name:
                raise GatewayError(MODEL_BAD, f"provider {provider_name} serves "
                                              f"{row.service_name!r}, not {service_name!r}")
            return row
        if not service_name:
            raise GatewayError(MODEL_BAD, "provider_name (or service_name) is required")
        await self.service_row(service_name, MODEL_NOT_FOUND)
        rows = await self.db(self.store.providers, service_name=service_name)
        if service_source:
            rows = [r for r in rows if r.service_source == service_source]
        rows.sort(key=lambda r: (r.service_source != (service_source or "local"),
                                 model_name not in r.models, not r.is_plugin))
        if not rows:
            raise GatewayError(MODEL_NOT_FOUND, f"service {service_name!r} has no "
                                                f"{service_source or ''} provider to pull "
                                                f"{model_name!r} with".replace("  ", " "))
        return rows[0]

    async def start_pull(self, provider_name: str, model_name: str, service_name: str = "",
                         service_source: str = "", *, background: bool = True) -> PullJob:
        """Validate and start (or join) a pull; the returned job runs on its own.

        A model named by an http(s) URL is recorded, pulled and later deleted under one
        name, the URL's file name without extensions, which the plugin is told to store
        it under (PullModelRequest.name): the store and the plugin must agree on it."""
        need(model_name, "model_name", MODEL_BAD)
        source = ""
        if re.match(r"^https?://", model_name):
            source, model_name = model_name, model_name_for_url(model_name)
        row = await self._pull_provider(provider_name, model_name, service_name,
                                        service_source)
        if service_source and service_source != row.service_source:
            raise GatewayError(MODEL_BAD, f"provider {row.provider_name} is "
                                          f"{row.service_source}, not {service_source}")
        job = self._jobs.get((row.provider_name, model_name))
        if job is not None:
            job.background = job.background or background
            return job
        plugin = None
        if row.service_source == "local":
            plugin = self.plugin_of(row)
            if plugin is None:
                raise GatewayError(MODEL_BAD, f"provider {row.provider_name} has no plugin "
                                              f"(api_flavor {row.flavor!r} is not a loaded "
                                              f"plugin) to pull {model_name!r} with")
            await self.client_of(plugin)
        before = await self.db(self.store.models, provider_name=row.provider_name,
                                model_name=model_name)
        job = self._jobs.get((row.provider_name, model_name))
        if job is not None:  # another request started it while we were checking
            job.background = job.background or background
            return job
        job = PullJob(row, model_name, row.service_name, background,
                      was_downloaded=any(r.status == ModelStatus.DOWNLOADED for r in before),
                      source=source)
        self._jobs[job.key] = job
        if not job.was_downloaded:
            await self.db(self.store.put_model, ModelRow(
                model_name, row.provider_name, row.service_name, row.service_source,
                status=ModelStatus.DOWNLOADING))
        self.gw.spawn(self._run_pull, job, plugin)
        return job

    async def _run_pull(self, job: PullJob, plugin: PluginSupervisor | None) -> None:
        observed.model_pull_started()
        try:
            with job.scope:
                if plugin is not None:
                    await self._pull_from(job, plugin)
                job.outcome = PullOutcome.SUCCESS
            if job.scope.cancelled_caught:
                job.outcome = PullOutcome.CANCELED
        except _PullFailed as exc:
            job.outcome, job.error = PullOutcome.ERROR, str(exc)
        except Exception as exc:  # a pull must always end with an event
            log.exception("pull of %s failed", job.model_name)
            job.outcome, job.error = PullOutcome.ERROR, f"{type(exc).__name__}: {exc}"
        finally:
            with trio.CancelScope(shield=True):
                if job.outcome is None:
                    job.outcome = PullOutcome.CANCELED
                    job.cancel_reason = job.cancel_reason or "the gateway is stopping"
                await self._finish_pull(job, plugin)
                observed.model_pull_ended(job.provider.flavor, str(job.outcome))

    async def _pull_from(self, job: PullJob, plugin: PluginSupervisor) -> None:
        client = plugin.client
        if client is None:
            raise _PullFailed(f"plugin {plugin.name} is not running")
        req = m.PullModelRequest(model=job.source or job.model_name,
                                 name=job.model_name if job.source else "",
                                 model_type=job.service_name)
        succeeded = False
        try:
            async with client.pull_model_stream(req) as events:
                async for event in events:
                    if "error" in event:
                        raise _PullFailed(f"{plugin.name}: {event['error']}")
                    if event.get("status") == "success":
                        succeeded = True  # announced once the store agrees
                        continue
                    job.publish(event)
        except RpcFailure as exc:
            raise _PullFailed(f"{plugin.name}: {exc.details or exc.code}") from None
        if not succeeded:
            raise _PullFailed(f"{plugin.name} ended the pull of {job.model_name!r} without "
                              f"reporting success")

    async def _finish_pull(self, job: PullJob, plugin: PluginSupervisor | None) -> None:
        """Make the store say what happened, then tell the watchers."""
        size = 0
        if job.outcome == PullOutcome.SUCCESS and plugin is not None and plugin.client is not None:
            with contextlib.suppress(Exception), trio.move_on_after(30):
                listed = await plugin.client.list_models(timeout=30)
                size = next((int(mi.size) for mi in listed.models
                             if job.model_name in (mi.name, mi.model)), 0)

        def write() -> None:
            pname = job.provider.provider_name
            rows = self.store.models(provider_name=pname, model_name=job.model_name)
            row = rows[0] if rows else ModelRow(job.model_name, pname, job.service_name,
                                                job.provider.service_source)
            if job.outcome == PullOutcome.SUCCESS:
                row.status = ModelStatus.DOWNLOADED
                row.size = size or row.size
                if not any(r.is_default and r.status == ModelStatus.DOWNLOADED
                           for r in self.store.models(service_name=job.service_name)):
                    row.is_default = True
                self.store.put_model(row)
            elif job.was_downloaded:
                pass  # the plugin keeps the copy it had
            elif job.outcome == PullOutcome.ERROR:
                row.status = ModelStatus.FAILED
                self.store.put_model(row)
            else:
                self.store.delete_model(pname, job.model_name)

        try:
            await self.db(write)
            await self.gw.reload()
        except Exception as exc:  # noqa: BLE001 - e.g. the store closed at shutdown
            log.warning("pull of %s: could not record the outcome: %s", job.model_name, exc)
        finally:
            self._jobs.pop(job.key, None)
            if job.outcome == PullOutcome.SUCCESS:
                job.publish({"status": "success"})
            elif job.outcome == PullOutcome.ERROR:
                job.publish({"status": "error", "data": job.error})
            else:
                job.publish({"status": "canceled",
                             "data": f"pull of {job.model_name} canceled: {job.cancel_reason}"})
            job.finish()

    def cancel_pull(self, model_name: str) -> list[str]:
        """Cancel every pull of `model_name`; returns the providers they were on."""
        need(model_name, "model_name", MODEL_BAD)
        hit = [j for j in self._jobs.values() if model_name in (j.model_name, j.source)]
        if not hit:
            busy = sorted({j.model_name for j in self._jobs.values()})
            raise GatewayError(MODEL_NOT_FOUND, f"no pull of {model_name!r} is in progress; "
                                                f"pulls in progress: {names(busy)}")
        for job in hit:
            job.cancel("canceled by request")
        return [j.provider.provider_name for j in hit]

    async def delete_model(self, provider_name: str, model_name: str,
                           service_name: str = "") -> dict[str, Any]:
        """Delete a model: the plugin's files (DeleteModel) first, then the row."""
        need(model_name, "model_name", MODEL_BAD)
        row = await self._pull_provider(provider_name, model_name, service_name, "")
        rows = await self.db(self.store.models, provider_name=row.provider_name,
                              model_name=model_name)
        if not rows:
            have = [r.model_name for r in await self.db(
                self.store.models, provider_name=row.provider_name)]
            raise GatewayError(MODEL_NOT_FOUND, f"model {model_name!r} is not on provider "
                                                f"{row.provider_name}; its models: "
                                                f"{names(have)}")
        job = self._jobs.get((row.provider_name, model_name))
        if job is not None:
            raise GatewayError(MODEL_BUSY, f"{model_name!r} is being pulled on "
                                           f"{row.provider_name}; cancel the pull first "
                                           f"(POST /model/stream/cancel)")
        plugin = self.plugin_of(row)
        if row.service_source == "local" and plugin is not None and \
                rows[0].status == ModelStatus.DOWNLOADED:
            client = await self.client_of(plugin)
            try:
                await self.call(plugin, "DeleteModel", lambda: client.delete_model(
                    m.DeleteModelRequest(model=model_name), timeout=60))
            except GatewayError as exc:
                if exc.bcode != errors.PLUGIN_MODEL_NOT_FOUND:  # already gone is fine
                    raise GatewayError(MODEL_ENGINE_DELETE, exc.message) from None

        def write() -> None:
            was_default = rows[0].is_default
            self.store.delete_model(row.provider_name, model_name)
            if was_default:  # the service keeps a default when another model is there
                rest = [r for r in self.store.models(service_name=row.service_name)
                        if r.status == ModelStatus.DOWNLOADED]
                if rest:
                    rest[0].is_default = True
                    self.store.put_model(rest[0])

        await self.db(write)
        await self.gw.reload()
        return rows[0].public()
