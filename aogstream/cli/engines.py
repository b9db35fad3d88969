"""`aogstream engine install|status`: set up local plugins' engines and default models.

It drives the plugins exactly as the gateway does (launched processes, gRPC,
AOG's InstallEngine and PullModelStream), without serving HTTP, so `make run` can
install everything first and show progress while it happens. InstallEngine is a
unary call in AOG's protocol; its progress is read from the JSON lines the plugin
writes to `<plugin data>/engine/install-progress.jsonl` while the call runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import trio

from aogstream import manifest as m
from aogstream.config import Config, default_plugin_dirs
from aogstream.gateway import Gateway
from aogstream.host.process import PluginSupervisor
from aogstream.rpc.bridge import GrpcLoop
from aogstream.store import SQLiteStore

# the plugins that come with aogstream (beside the package in a checkout)
SHIPPED_PLUGINS = Path(__file__).resolve().parent.parent.parent / "plugins"


def cmd_engine(args: argparse.Namespace) -> int:
    """`engine install|status` with the engine folder and plugin folders resolved as the
    gateway would resolve them, plus the shipped plugins when run outside the checkout."""
    cfg = Config.from_env(data_dir=args.data_dir, plugin_dirs=args.plugin_dir,
                          engine_dir=args.engine_dir)
    if args.data_dir is not None and not args.plugin_dir:
        cfg.plugin_dirs = default_plugin_dirs(cfg.data_dir)
    shipped = SHIPPED_PLUGINS.resolve()
    if not args.plugin_dir and shipped.is_dir() and shipped not in cfg.plugin_dirs:
        # run outside the repository folder: the engines are the shipped plugins' still
        cfg.plugin_dirs.append(shipped)
    logging.getLogger().setLevel(logging.WARNING)
    if args.action == "install":
        return trio.run(lambda: run_install(
            cfg, args.plugins, cover=args.cover, models=not args.no_models))
    return trio.run(run_status, cfg)


def _gateway(cfg: Config, gl: GrpcLoop) -> Gateway:
    """A gateway that only drives plugins: its store is in memory, so installing
    engines never writes the user's database."""
    return Gateway(cfg, gl, SQLiteStore(Path(":memory:")))


def say(plugin: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {plugin}: {text}", file=sys.stderr, flush=True)


async def _follow(path: Path, plugin: str, offset: int) -> None:
    """Print install progress lines as the plugin appends them."""
    while True:
        try:
            with path.open() as f:
                f.seek(offset)
                for line in f:
                    offset += len(line.encode())
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    say(plugin, f"{event.get('status', '')} "
                                f"[{event.get('elapsed', 0):.0f} s]")
        except OSError:
            pass
        await trio.sleep(0.5)


class Bar:
    """A progress bar on a terminal, a line every 10 % elsewhere."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self.tty = sys.stderr.isatty()
        self.shown = -1
        self.status = ""

    def update(self, ev: dict[str, Any]) -> None:
        total, done = int(ev.get("total") or 0), int(ev.get("completed") or 0)
        status = str(ev.get("status", ""))
        if not total:
            if status != self.status:
                self.end()
                say(self.plugin, status)
                self.status = status
            return
        pct = int(100 * done / total)
        if self.tty:
            filled = pct * 30 // 100
            sys.stderr.write(f"\r  {status[:40]:40} [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{pct:3d}% {done / 1e6:6.1f}/{total / 1e6:.1f} MB")
            sys.stderr.flush()
            self.shown = pct
        elif pct // 10 != self.shown // 10 or (pct == 100 and self.shown != 100):
            say(self.plugin, f"{status} {pct}% ({done / 1e6:.1f}/{total / 1e6:.1f} MB)")
            self.shown = pct
        self.status = status

    def end(self) -> None:
        if self.tty and self.shown >= 0:
            sys.stderr.write("\n")
            self.shown = -1


async def install_plugin(plugin: PluginSupervisor, *, cover: bool, models: bool) -> dict[str, Any]:
    name = plugin.name
    client = plugin.client
    assert client is not None
    t0 = time.monotonic()
    report: dict[str, Any] = {"plugin": name}
    if cover or not await client.check_engine(timeout=60):
        progress = plugin.data_dir / "engine" / "install-progress.jsonl"
        progress.parent.mkdir(parents=True, exist_ok=True)
        progress.write_text("")
        say(name, "installing its engine into " + str(plugin.data_dir / "engine"))
        async with trio.open_nursery() as n:
            n.start_soon(_follow, progress, name, 0)
            await client.install_engine(cover=cover, timeout=None)
            n.cancel_scope.cancel()
        report["engine_s"] = round(time.monotonic() - t0, 1)
        say(name, f"engine installed in {report['engine_s']} s")
    else:
        say(name, "engine already installed")
        report["engine_s"] = 0.0
    if models:
        have = {mi.name for mi in (await client.list_models(timeout=60)).models}
        wanted = sorted({s.default_model for s in plugin.manifest.services if s.default_model})
        for model in wanted:
            if model in have:
                say(name, f"model {model} already pulled")
                continue
            t1 = time.monotonic()
            bar = Bar(name)
            async with client.pull_model_stream(m.PullModelRequest(model=model)) as events:
                async for ev in events:
                    if "error" in ev:
                        bar.end()
                        raise m.PluginError(m.ERR_CODE_MODEL_PULL_FAILED, str(ev["error"]), "")
                    bar.update(ev)
            bar.end()
            report[f"pull {model} s"] = round(time.monotonic() - t1, 1)
            say(name, f"model {model} pulled in {report[f'pull {model} s']} s")
    return report


async def run_install(cfg: Config, names: list[str], *, cover: bool, models: bool) -> int:
    cfg.start_engines = False
    failures = 0
    async with GrpcLoop.open() as gl, trio.open_nursery() as nursery:
        gw = _gateway(cfg, gl)
        await gw.start(nursery)
        try:
            for problem in gw.problems:
                print(f"plugin problem: {problem}", file=sys.stderr)
            local = [p for p in gw.plugins.values()
                     if p.manifest.provider.type == m.PLUGIN_TYPE_LOCAL
                     and (not names or p.name in names)]
            if not local and not names:
                print("no local plugins found in " + ", ".join(str(d) for d in cfg.plugin_dirs)
                      + "; name a folder with --plugin-dir", file=sys.stderr)
                return 1
            unknown = set(names) - {p.name for p in local}
            if unknown:
                known = ", ".join(p.name for p in gw.plugins.values()
                                  if p.manifest.provider.type == m.PLUGIN_TYPE_LOCAL)
                print(f"no local plugin named {', '.join(sorted(unknown))}; local plugins: "
                      f"{known}", file=sys.stderr)
                return 2
            # quick engines first: their services are usable while llama.cpp compiles
            local.sort(key=lambda p: p.name == "llamacpp-plugin")
            reports = []
            for plugin in local:
                if not await plugin.wait_ready(cfg.plugin_start_timeout):
                    print(f"{plugin.name} did not start: {plugin.last_error}", file=sys.stderr)
                    failures += 1
                    continue
                try:
                    reports.append(await install_plugin(plugin, cover=cover, models=models))
                except Exception as exc:  # noqa: BLE001 - report and go on with the others
                    say(plugin.name, f"FAILED: {exc}")
                    failures += 1
            for r in reports:
                print("  " + ", ".join(f"{k}: {v}" for k, v in r.items()), file=sys.stderr)
        finally:
            with trio.CancelScope(shield=True):
                await gw.stop()
            nursery.cancel_scope.cancel()
    return 1 if failures else 0


async def run_status(cfg: Config) -> int:
    cfg.start_engines = False
    async with GrpcLoop.open() as gl, trio.open_nursery() as nursery:
        gw = _gateway(cfg, gl)
        await gw.start(nursery)
        try:
            if not any(p.manifest.provider.type == m.PLUGIN_TYPE_LOCAL
                       for p in gw.plugins.values()):
                print("no local plugins found in " + ", ".join(str(d) for d in cfg.plugin_dirs)
                      + "; name a folder with --plugin-dir", file=sys.stderr)
                return 1
            for plugin in gw.plugins.values():
                if plugin.manifest.provider.type != m.PLUGIN_TYPE_LOCAL:
                    continue
                if plugin.client is None and not await plugin.wait_ready(
                        cfg.plugin_start_timeout):
                    print(f"{plugin.name}: did not start: {plugin.last_error}")
                    continue
                if plugin.client is None:
                    continue
                installed = await plugin.client.check_engine(timeout=30)
                line = f"{plugin.name}: engine {'installed' if installed else 'NOT installed'}"
                if installed:
                    models = (await plugin.client.list_models(timeout=30)).models
                    line += "; models: " + (", ".join(
                        f"{mi.name} ({mi.size / 1e6:.0f} MB)" for mi in models) or "none")
                print(line)
        finally:
            with trio.CancelScope(shield=True):
                await gw.stop()
            nursery.cancel_scope.cancel()
    return 0
