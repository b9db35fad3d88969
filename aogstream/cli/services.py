"""`aogstream get|edit|delete|install|pull`: services, their providers and models.

Each command is a thin client of the management API (`/service`, `/service_provider`,
`/model`, `/service/install`, `/model/stream`); credentials go in files or the API,
never onto the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from aogstream.cli.client import (
    BASE,
    EXIT_INTERRUPTED,
    STREAM_TIMEOUT,
    Api,
    CliError,
    sse_events,
)
from aogstream.cli.output import Progress, dump_json, read_json_file, table

HYBRID_POLICIES = ("default", "always_local", "always_remote")
AUTH_TYPES = ("none", "apikey", "token", "sign", "oauth")
SERVICE_STATUS = {-1: "not installed", 0: "ready", 1: "available", 2: "creating"}
PROVIDER_STATUS = {0: "unhealthy", 1: "healthy"}


def cmd_get(api: Api, args: argparse.Namespace) -> int:
    """Aligned tables as `aog get` prints them; --json gives scripts the API's items."""
    what = args.what
    if what == "services":
        data = api.call("GET", "/service", params={"service_name": args.name}) or []
        if args.json:
            dump_json(data)
            return 0
        table(["SERVICE", "HYBRID POLICY", "STATUS", "WHY", "UPDATED"],
              [[s.get("service_name"), s.get("hybrid_policy"),
                s.get("state") or SERVICE_STATUS.get(s.get("status"), s.get("status")),
                s.get("reason") or "", s.get("updated_at")] for s in data])
    elif what == "models":
        data = api.call("GET", "/model", params={"provider_name": args.provider,
                                                 "service_name": args.service}) or []
        if args.provider and not data:
            known = [p.get("provider_name") for p in
                     api.call("GET", "/service_provider") or []]
            if args.provider not in known:
                raise CliError(f"provider {args.provider!r} does not exist; providers: "
                               f"{', '.join(sorted(str(k) for k in known)) or 'none'}")
        if args.json:
            dump_json(data)
            return 0
        table(["MODEL", "PROVIDER", "SERVICE", "SOURCE", "STATUS", "DEFAULT", "UPDATED"],
              [[m.get("model_name"), m.get("provider_name"), m.get("service_name"),
                m.get("service_source"), _model_status(m), "yes" if m.get("is_default") else "",
                m.get("updated_at")] for m in data])
    else:
        data = api.call("GET", "/service_provider", params={
            "service_name": args.service, "provider_name": args.provider,
            "service_source": args.remote}) or []
        if args.json:
            dump_json([_no_key(p) for p in data])
            return 0
        table(["PROVIDER", "SERVICE", "SOURCE", "FLAVOR", "AUTH", "KEY", "STATUS", "MODELS",
               "WHY"],
              [[p.get("provider_name"), p.get("service_name"), p.get("service_source"),
                p.get("flavor") or p.get("api_flavor"), p.get("auth_type"),
                "set" if p.get("has_auth_key") else "",
                p.get("state") or PROVIDER_STATUS.get(p.get("status"), p.get("status")),
                ",".join(p.get("models") or []),
                "" if p.get("state") == "serving" else p.get("reason") or ""] for p in data])
    return 0


def _model_status(model: dict[str, Any]) -> str:
    """"downloaded" only when a request for it would be served; else what stops it (a
    cloud model is nothing to download: only whether it can be used counts)."""
    status, state = str(model.get("status") or ""), str(model.get("state") or "")
    if status == "downloaded" and state and state != "serving":
        return state if model.get("service_source") == "remote" else f"downloaded, {state}"
    if status == "downloaded" and model.get("service_source") == "remote":
        return "available"
    return status


def _no_key(provider: dict[str, Any]) -> dict[str, Any]:
    """Belt and braces: a credential never reaches the terminal, whatever a server sends."""
    return {k: v for k, v in provider.items() if k != "auth_key"}


def cmd_edit(api: Api, args: argparse.Namespace) -> int:
    """A service's hybrid policy, or a provider's fields from a file (keys never on the
    command line, where shell history would keep them)."""
    if args.what == "service":
        api.call("PUT", "/service", body={"service_name": args.name,
                                          "hybrid_policy": args.hybrid_policy})
        print(f"service {args.name}: hybrid policy is now {args.hybrid_policy}")
        return 0
    body = read_json_file(args.file, "provider")
    if not isinstance(body, dict):
        raise CliError(f"provider file {args.file} must hold a JSON object", 2)
    body["provider_name"] = args.name
    api.call("PUT", "/service_provider", body=_provider_body(body))
    print(f"provider {args.name} updated")
    return 0


def _provider_body(body: dict[str, Any]) -> dict[str, Any]:
    """AOG's provider files: `auth_key` and the JSON-string fields may be written as
    objects; the API takes them as JSON strings."""
    out = dict(body)
    for key in ("auth_key", "extra_headers", "extra_json_body", "properties"):
        if isinstance(out.get(key), dict | list):
            out[key] = json.dumps(out[key])
    if "flavor" in out and "api_flavor" not in out:
        out["api_flavor"] = out.pop("flavor")
    return out


def cmd_delete(api: Api, args: argparse.Namespace) -> int:
    if args.what == "service_provider":
        api.call("DELETE", "/service_provider", body={"provider_name": args.name})
        print(f"provider {args.name} deleted")
        return 0
    provider = args.provider or _pick_provider_of_model(api, args.name, args.service)
    body: dict[str, Any] = {"provider_name": provider, "model_name": args.name}
    if args.service:
        body["service_name"] = args.service
    api.call("DELETE", "/model", body=body)
    print(f"model {args.name} deleted from {provider}")
    return 0


def _pick_provider_of_model(api: Api, model: str, service: str | None) -> str:
    rows = api.call("GET", "/model", params={"model_name": model, "service_name": service}) or []
    names: list[str] = sorted({r.get("provider_name", "") for r in rows})
    if len(names) == 1:
        return names[0]
    if not names:
        raise CliError(f"no provider has model {model!r}; see `aogstream get models`")
    raise CliError(f"model {model!r} is on several providers ({', '.join(names)}); "
                   f"say which with -p")


def cmd_install(api: Api, args: argparse.Namespace) -> int:
    """Local: the gateway readies the engine and pulls the model, which can take minutes,
    so no client timeout applies. Remote: see `_install_remote`."""
    if args.service == "service_provider":
        if not args.file:
            raise CliError("install service_provider needs -f <provider.json>", 2)
        given = read_json_file(args.file, "provider")
        if not isinstance(given, dict):
            raise CliError(f"provider file {args.file} must hold a JSON object", 2)
        provider = _provider_body(given)
        api.call("POST", "/service_provider", body=provider)
        print(f"provider {provider.get('provider_name', '?')} created")
        return 0
    if args.remote:
        return _install_remote(api, args)
    body: dict[str, Any] = {"service_name": args.service, "service_source": "local",
                            "skip_model": bool(args.skip_model)}
    for key, value in (("provider_name", args.name), ("api_flavor", args.flavor),
                       ("model_name", args.model)):
        if value:
            body[key] = value
    what = "engine" if args.skip_model else "engine and model"
    print(f"installing {args.service} ({what}; the first time this can take minutes)...",
          flush=True)
    api.call("POST", "/service/install", body=body, timeout=STREAM_TIMEOUT)
    print(f"service {args.service} installed")
    return 0


def _only_remote_plugin(api: Api, service: str) -> str:
    """The remote plugin offering `service` when there is exactly one (so `install chat
    --remote --name X --auth-key ...` needs no --flavor on a usual setup), else ""."""
    plugins = api.call("GET", "/plugin/list") or []
    remote = [p.get("name") for p in plugins if p.get("type") == "remote"
              and service in (p.get("services") or [])]
    return str(remote[0]) if len(remote) == 1 else ""


def _install_remote(api: Api, args: argparse.Namespace) -> int:
    """Create or update the remote provider when the options describe one, then let
    `/service/install` check the credentials live; a provider created here is removed
    again when that check fails, so a bad key leaves nothing behind."""
    name = args.name or (f"remote_{args.flavor}_{args.service}" if args.flavor else "")
    if not name:
        raise CliError("install --remote needs --name (an existing provider) or --flavor "
                       "(to create one)", 2)
    auth_key = args.auth_key or ""
    auth_type = args.auth_type or ("apikey" if auth_key else None)
    existing = api.call("GET", "/service_provider", params={"provider_name": name}) or []
    created = False
    if not existing:
        flavor = args.flavor or _only_remote_plugin(api, args.service)
        if not flavor:
            raise CliError(f"there is no provider {name!r}; give --flavor (and --auth-key) "
                           f"to create it, or see `aogstream get service_providers`")
        api.call("POST", "/service_provider", body={
            "provider_name": name, "service_name": args.service, "service_source": "remote",
            "api_flavor": flavor, "url": args.remote_url or "", "method": args.method,
            "auth_type": auth_type or "none", "auth_key": auth_key,
            "models": [args.model] if args.model else [],
        })
        created = True
    elif auth_key or args.remote_url or args.auth_type:
        update: dict[str, Any] = {"provider_name": name}
        if auth_key:
            update["auth_key"] = auth_key
        if auth_type:
            update["auth_type"] = auth_type
        if args.remote_url:
            update["url"] = args.remote_url
        api.call("PUT", "/service_provider", body=update)
    body: dict[str, Any] = {"service_name": args.service, "service_source": "remote",
                            "provider_name": name, "skip_model": bool(args.skip_model)}
    if args.flavor:
        body["api_flavor"] = args.flavor
    if auth_type:
        body["auth_type"] = auth_type
    if auth_key:
        body["auth_key"] = auth_key
    if args.model:
        body["model_name"] = args.model
    try:
        api.call("POST", "/service/install", body=body, timeout=STREAM_TIMEOUT)
    except CliError:
        if created:
            with contextlib.suppress(CliError):
                api.call("DELETE", "/service_provider", body={"provider_name": name})
        raise
    print(f"service {args.service} installed with remote provider {name}")
    return 0


def cmd_pull(api: Api, args: argparse.Namespace) -> int:
    """Follow `/model/stream` with a progress bar. A pull outlives its watchers on the
    gateway, so Ctrl-C cancels it explicitly with `/model/stream/cancel`."""
    source = "remote" if args.remote else "local"
    provider = args.provider or _pick_provider_of_service(api, args.service, source)
    body = {"model_name": args.model, "service_name": args.service,
            "provider_name": provider, "service_source": source}
    out = sys.stdout
    bar = Progress(out)
    print(f"pulling {args.model} for {args.service} with {provider}", flush=True)
    try:
        with api.stream(BASE + "/model/stream", body) as resp:
            for ev in sse_events(resp):
                status = str(ev.get("status") or "")
                if status == "error" or ev.get("error"):
                    bar.end()
                    raise CliError(f"pull failed: {ev.get('data') or ev.get('error')}")
                if status == "canceled":
                    bar.end()
                    raise CliError("pull canceled", EXIT_INTERRUPTED)
                bar.update(ev)
                if status == "success":
                    break
            else:
                bar.end()
                raise CliError("pull ended before the gateway reported success; see "
                               "`aogstream get models`")
    except KeyboardInterrupt:
        bar.end()
        with contextlib.suppress(CliError):
            api.call("POST", "/model/stream/cancel", body={"model_name": args.model})
        raise CliError(f"pull of {args.model} canceled", EXIT_INTERRUPTED) from None
    bar.end()
    print(f"{args.model} pulled: success")
    return 0


def _pick_provider_of_service(api: Api, service: str, source: str) -> str:
    rows = api.call("GET", "/service_provider",
                    params={"service_name": service, "service_source": source}) or []
    names: list[str] = sorted(r.get("provider_name", "") for r in rows)
    if len(names) == 1:
        return names[0]
    if not names:
        raise CliError(f"no {source} provider serves {service!r}; see "
                       f"`aogstream get service_providers`")
    raise CliError(f"several {source} providers serve {service!r} ({', '.join(names)}); "
                   f"say which with --provider")
