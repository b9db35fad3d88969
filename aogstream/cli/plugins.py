"""`aogstream plugin list|info|install|enable|disable|load|stop|delete`: the gateway's
plugins, through its `/plugin/*` management routes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx

from aogstream.cli.client import Api, CliError
from aogstream.cli.output import dump_json, short, table

PLUGIN_STATUS = {1: "running", 2: "stopped", 3: "not loaded"}


def cmd_plugin(api: Api, args: argparse.Namespace) -> int:
    """Plugin control; `install` sends an absolute path, since the server resolves it
    from its own working directory."""
    action = args.action
    if action == "run":  # a native plugin's command, run here (no gateway call)
        from aogstream.cli.native_run import cmd_plugin_run

        return cmd_plugin_run(args)
    if action == "list":
        data = api.call("GET", "/plugin/list") or []
        if args.json:
            dump_json(data)
            return 0
        table(["NAME", "STATE", "ENABLED", "PID", "VERSION", "SERVICES", "DESCRIPTION"],
              [[p.get("name"), p.get("state") or PLUGIN_STATUS.get(p.get("status"), "?"),
                {True: "yes", False: "no"}.get(p.get("enabled"), ""),
                p.get("pid"), p.get("version"), ",".join(p.get("services") or []),
                short(p.get("description") or "", 50)] for p in data])
        return 0
    if action == "info":
        info = api.call("GET", "/plugin/info", params={"name": args.name})
        if args.json or not isinstance(info, dict):
            dump_json(info)
            return 0
        width = max((len(k) for k in info), default=0)
        for key, value in info.items():
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = ", ".join(value)
            elif isinstance(value, dict | list):
                value = json.dumps(value, ensure_ascii=False)
            print(f"{key.ljust(width)}  {'-' if value in (None, '') else value}")
        return 0
    if action == "install":
        path = Path(args.path).expanduser()
        if not path.exists():
            raise CliError(f"no such plugin folder or archive: {args.path}", 2)
        data = api.call("POST", "/plugin/install", body={"path": str(path.resolve())},
                        timeout=httpx.Timeout(180.0, connect=5.0))
        name = data.get("name") if isinstance(data, dict) else None
        print(f"plugin {name or path.name} installed")
        return 0
    if action == "delete":
        if not args.force and sys.stdin.isatty():
            answer = input(f"delete plugin(s) {', '.join(args.names)} and their providers? "
                           f"[y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        for name in args.names:
            api.call("DELETE", "/plugin/delete", body={"name": name})
            print(f"plugin {name} deleted")
        return 0
    api.call("POST", f"/plugin/{action}", body={"name": args.name},
             timeout=httpx.Timeout(120.0, connect=5.0))
    done = {"load": "loaded", "stop": "stopped", "enable": "enabled", "disable": "disabled"}
    print(f"plugin {args.name} {done[action]}")
    return 0
