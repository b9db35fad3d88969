"""`aogstream plugin run <id> [flags] [args]`: a native plugin's command line.

CLIProxyAPI runs a plugin's command in its own process, before serving: the plugin
declares its flags (`command_line.register`), the host parses the command line with
Go's `flag` rules and calls `command_line.execute` with every flag (`Flags`) and the
ones given (`TriggeredFlags`), then prints the plugin's `Stdout`/`Stderr` and exits
with its `ExitCode`. This does the same in the CLI's process: it reads
`<data dir>/config.yaml`, finds the library as the gateway does, loads it (the plugin
must be enabled there, as in CPA), runs the command and unloads it. No gateway needs
to run, except for a plugin that calls `host.model.*` (they go to the gateway's port).

Go's flag rules: `-name value`, `--name value`, `-name=value`; a bool flag alone means
true; parsing stops at the first argument that is not a flag, or after `--`.
Auth records a command returns (`Auths`) are saved as a login's are, 0600 files in
`<data dir>/native-auths/` that a running gateway picks up; stderr names them.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import trio

from aogstream.config import Config

BOOL_TRUE = {"1", "t", "T", "true", "TRUE", "True"}
BOOL_FALSE = {"0", "f", "F", "false", "FALSE", "False"}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
          "m": 60_000_000_000, "h": 3_600_000_000_000}


class UsageError(Exception):
    """The command line does not fit the plugin's flags (said how)."""


def _duration(text: str) -> int:
    """A Go duration ("1h30m", "250ms", "0") in nanoseconds."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    if body == "0":
        return 0
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if pos != len(body) or not body:
        raise ValueError(text)
    return sign * int(total)


def _convert(kind: str, text: str) -> Any:
    if kind == "bool":
        if text in BOOL_TRUE:
            return True
        if text in BOOL_FALSE:
            return False
        raise ValueError(text)
    if kind in ("int", "int64"):
        return int(text, 0)
    if kind == "float64":
        return float(text)
    if kind == "duration":
        return _duration(text)
    return text


def parse_flags(declared: list[dict[str, str]], argv: list[str]
                ) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(Flags, TriggeredFlags, Args) for `command_line.execute` from `argv`."""
    from aogstream.host.native import gojson as gj

    kinds = {gj.text(f, "Name"): (gj.text(f, "Type") or "bool").lower() for f in declared}
    flags: dict[str, Any] = {}
    for f in declared:
        name, kind = gj.text(f, "Name"), kinds[gj.text(f, "Name")]
        default = gj.text(f, "DefaultValue")
        try:
            value = _convert(kind, default) if default else _convert(kind, "false") \
                if kind == "bool" else 0 if kind in ("int", "int64", "duration") \
                else 0.0 if kind == "float64" else ""
        except ValueError:
            value = default
        flags[name] = {"Name": name, "Type": kind, "Value": value, "Set": False}
    triggered: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.lstrip("-").partition("=")
        if name not in kinds:
            known = ", ".join(f"-{n}" for n in sorted(kinds)) or "none"
            raise UsageError(f"flag provided but not defined: -{name} (this plugin's flags: "
                             f"{known})")
        kind = kinds[name]
        if not eq:
            if kind == "bool":
                value = "true"
            else:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                value = argv[i]
        try:
            converted = _convert(kind, value)
        except ValueError:
            raise UsageError(f"invalid value {value!r} for flag -{name} ({kind})") from None
        entry = {"Name": name, "Type": kind, "Value": converted, "Set": True}
        flags[name] = triggered[name] = entry
        i += 1
    return gj.GoMap(flags), gj.GoMap(triggered), argv[i:]


async def _run(cfg: Config, plugin_id: str, argv: list[str]) -> int:
    from aogstream.host.native import gojson as gj
    from aogstream.host.native.callbacks import HostServices
    from aogstream.host.native.discovery import discover
    from aogstream.host.native.loader import CONFIG_FILE, read_config
    from aogstream.host.native.plugin import HOST_SUMMARY, NativePlugin, metadata_object
    from aogstream.plugin_config import PluginConfigFile

    native = read_config(cfg.data_dir)
    if native.error:
        print(f"aogstream: {native.error}", file=sys.stderr)
        return 2
    roots = ([native.dir] if native.dir else []) + [Path(d) for d in cfg.plugin_dirs]
    installed = cfg.data_dir / "plugins"
    if all(r.absolute() != installed.absolute() for r in roots):
        roots.append(installed)
    found = discover(roots, native.desired_versions()).get(plugin_id)
    if found is None:
        print(f"aogstream: no native plugin {plugin_id!r} in the plugin folders",
              file=sys.stderr)
        return 2
    if not (native.enabled and native.plugin_enabled(plugin_id)):
        print(f"aogstream: native plugin {plugin_id} is not enabled: set plugins.enabled "
              f"and plugins.configs.{plugin_id}.enabled to true in {CONFIG_FILE}",
              file=sys.stderr)
        return 2
    host = HostServices(cfg.max_body_bytes, gateway_url=f"http://127.0.0.1:{cfg.port}",
                        own_models=lambda _pid: set(),
                        trust=PluginConfigFile.in_data_dir(cfg.data_dir))  # same LLM gate
    plugin = NativePlugin(plugin_id, found.path, native.yaml_for(plugin_id),
                          native.priority(plugin_id), host, trio.Lock())
    try:
        await plugin.load()
        if plugin.state != "running":
            print(f"aogstream: native plugin {plugin_id}: {plugin.last_error}",
                  file=sys.stderr)
            return 1
        if not gj.boolean(plugin.capabilities, "command_line_plugin"):
            print(f"aogstream: native plugin {plugin_id} offers no command line",
                  file=sys.stderr)
            return 2
        meta = metadata_object(plugin.metadata)
        reply = await plugin.call("command_line.register", {"Plugin": meta})
        declared = [f for f in gj.field(reply, "Flags", []) or [] if isinstance(f, dict)]
        try:
            flags, triggered, args = parse_flags(declared, argv)
        except UsageError as exc:
            print(f"aogstream: {exc}", file=sys.stderr)
            return 2
        reply = await plugin.call("command_line.execute", {
            "Plugin": meta, "Program": "aogstream", "Args": args,
            "ConfigPath": str(cfg.data_dir / CONFIG_FILE), "Host": HOST_SUMMARY,
            "Flags": flags, "TriggeredFlags": triggered})
        sys.stdout.buffer.write(gj.data(reply, "Stdout"))
        sys.stdout.flush()
        sys.stderr.buffer.write(gj.data(reply, "Stderr"))
        auths = gj.field(reply, "Auths")
        if isinstance(auths, list) and auths:
            _save_auths(cfg.data_dir, plugin, [a for a in auths if isinstance(a, dict)])
        sys.stderr.flush()
        return gj.integer(reply, "ExitCode")
    except Exception as exc:  # noqa: BLE001 - a plugin failure: one line, exit 1
        message = getattr(exc, "message", None) or str(exc)
        print(f"aogstream: {message}", file=sys.stderr)
        return 1
    finally:
        if plugin.state == "running":
            await plugin.shutdown()
        await host.aclose()


def _save_auths(data_dir: Path, plugin: Any, auths: list[dict[str, Any]]) -> None:
    """The auth records a command returned, stored as the gateway stores a login's
    (0600 files in `<data dir>/native-auths/`, which a running gateway picks up); only
    their IDs are printed, never their contents."""
    from aogstream.host.native.auths import AuthError, AuthStore

    store = AuthStore(data_dir)
    for auth in auths:
        try:
            rec = store.save_auth(auth, plugin.auth_key)
        except (AuthError, OSError) as exc:
            print(f"aogstream: an auth record the command returned was not saved: {exc}",
                  file=sys.stderr)
            continue
        print(f"aogstream: saved auth record {rec.id} ({rec.provider})", file=sys.stderr)


def cmd_plugin_run(args: argparse.Namespace) -> int:
    """Run the command of the native plugin `args.name` with `args.args`."""
    cfg = Config.from_env()
    return trio.run(_run, cfg, args.name, list(args.args))
