"""The `aogstream` commands that talk HTTP to a running gateway (AOG's `aog` CLI).

Every command here is a thin client of the management and service APIs under
`/aog/v0.2`: it never opens the database or a plugin itself, so what the CLI shows is
exactly what any other client of the gateway would see. The gateway's address comes
from `AOG_HOST`, as with AOG. Imports stay light (httpx, and websockets only for the
realtime socket) so a command answers quickly.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx

from aogstream import SPEC_VERSION

DEFAULT_HOST = "http://127.0.0.1:16688"
DEFAULT_PORT = 16688
BASE = f"/aog/{SPEC_VERSION}"
HYBRID_POLICIES = ("default", "always_local", "always_remote")
AUTH_TYPES = ("none", "apikey", "token", "sign", "oauth")
SERVICE_STATUS = {-1: "not installed", 0: "ready", 1: "available", 2: "creating"}
PROVIDER_STATUS = {0: "unhealthy", 1: "healthy"}
PLUGIN_STATUS = {1: "running", 2: "stopped", 3: "not loaded"}
MANAGE_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
# streams (pull, chat, local install) end when the gateway says so: it owns the deadlines
STREAM_TIMEOUT = httpx.Timeout(None, connect=5.0)
FRAME_MS = 20
RATE = 16000
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to show as one clear line on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def server_url(raw: str | None = None) -> str:
    """`AOG_HOST` as a base URL: a full URL, `host:port` or a bare host all work."""
    value = (raw if raw is not None else os.environ.get("AOG_HOST", "")).strip() or DEFAULT_HOST
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if not parts.hostname:
        raise CliError(f"AOG_HOST={value!r} is not an address; use host:port or "
                       f"http://host:port (default {DEFAULT_HOST})", 2)
    netloc = parts.netloc if parts.port else f"{parts.netloc}:{DEFAULT_PORT}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def management_key(url: str) -> str:
    """The key to send: `AOGSTREAM_MANAGEMENT_KEY`, else, for a gateway on this machine
    (a loopback address), the key file in the data directory (`AOG_DATA_DIR` or the
    default), so the user never types it. Never read for a remote gateway: its key is
    not ours to send elsewhere."""
    from aogstream import config

    key = os.environ.get(config.MANAGEMENT_KEY_ENV, "").strip()
    if key:
        return key
    host = urlsplit(url).hostname or ""
    if config.is_loopback_host(host):
        return config.read_management_key(config.default_data_dir())
    return ""


def not_running(url: str) -> CliError:
    return CliError(f"aogstream is not running at {url}; start it with "
                    f"`aogstream server start -d`")


def _message(resp: httpx.Response) -> str:
    """The gateway's own words for an error response (its envelope's message)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or f"HTTP {resp.status_code}"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return json.dumps(body)


class Api:
    """A sync HTTP client for one gateway that turns transport and API failures into
    CliErrors (a refused connection means the server is not running)."""

    def __init__(self, url: str) -> None:
        self.url = url
        key = management_key(url)
        # the management key opens the service routes too (when they need API keys)
        self.headers = {"X-Management-Key": key} if key else {}
        self.http = httpx.Client(base_url=url, timeout=MANAGE_TIMEOUT, trust_env=False,
                                 headers=self.headers)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: Any = None, timeout: httpx.Timeout = MANAGE_TIMEOUT) -> Any:
        """One management call; returns the envelope's `data` (or the whole body)."""
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            resp = self.http.request(method, BASE + path, params=query or None,
                                     json=body, timeout=timeout)
        except httpx.ConnectError as exc:
            raise not_running(self.url) from exc
        except httpx.TimeoutException as exc:
            raise CliError(f"{method} {path} got no answer from {self.url} in time") from exc
        if resp.status_code >= 400:
            raise CliError(f"error: {_message(resp)}")
        try:
            payload = resp.json()
        except ValueError:
            return resp.text
        if isinstance(payload, dict) and "business_code" in payload:
            return payload.get("data")
        return payload

    @contextlib.contextmanager
    def stream(self, path: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """POST and yield the open response (errors before the first byte raised)."""
        try:
            with self.http.stream("POST", path, json=body, headers=headers,
                                  timeout=STREAM_TIMEOUT) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise CliError(f"error: {_message(resp)}")
                yield resp
        except httpx.ConnectError as exc:
            raise not_running(self.url) from exc

    def health(self) -> bool:
        try:
            return self.http.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


def sse_events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    """JSON events of an SSE (`data: {...}`) or NDJSON body, as they arrive."""
    for line in resp.iter_lines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("data:"):
            line = line[5:].strip()
        elif not line.startswith("{"):
            continue  # SSE comments, event names
        if line == "[DONE]":
            return
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            yield ev


# ---- output -----------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[Any]], out: TextIO | None = None) -> None:
    """Aligned columns, like AOG's `aog get ...` output."""
    out = out or sys.stdout
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    for row in [headers, *cells]:
        out.write("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip() + "\n")
    out.flush()


def dump_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def read_json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {what} file {path}: {exc.strerror or exc}", 2) from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"{what} file {path} is not valid JSON: {exc}", 2) from exc


class Progress:
    """A pull's progress: one redrawn line on a terminal, else a line per 10 %."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.shown = -1
        self.status = ""
        self.open_line = False

    def update(self, ev: dict[str, Any]) -> None:
        status = str(ev.get("status") or "")
        total, done = int(ev.get("total") or 0), int(ev.get("completed") or 0)
        if not total:
            if status != self.status:
                self.end()
                self.out.write(f"{status}\n")
            self.status = status
            self.out.flush()
            return
        if status != self.status:
            self.end()
            self.shown = -1
        pct = min(100, int(100 * done / total))
        sizes = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB"
        if self.tty:
            filled = pct * 30 // 100
            self.out.write(f"\r{status[:36]:36} [{'#' * filled}{'.' * (30 - filled)}] "
                           f"{pct:3d}% {sizes}\x1b[K")
            self.open_line = True
            self.shown = pct
        elif self.shown < 0 or pct // 10 > self.shown // 10:
            self.out.write(f"{status} {pct}% ({sizes})\n")
            self.shown = pct
        self.status = status
        self.out.flush()

    def end(self) -> None:
        if self.open_line:
            self.out.write("\n")
            self.out.flush()
            self.open_line = False


# ---- commands ---------------------------------------------------------------------------


def cmd_version(api: Api, _args: argparse.Namespace) -> int:
    """The client's version always, the server's when one answers (a mismatch shows)."""
    from aogstream import AOG_VERSION, __version__

    print(f"aogstream {__version__} (AOG {AOG_VERSION} compatible, API {SPEC_VERSION})")
    try:
        info = api.call("GET", "/version", timeout=httpx.Timeout(3.0))
    except CliError:
        print(f"server: not running at {api.url}")
        return 0
    info = info if isinstance(info, dict) else {}
    print(f"server: aogstream {info.get('aogstream', '?')} (AOG {info.get('version', '?')}, "
          f"API {info.get('spec_version', '?')}) at {api.url}")
    return 0


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


def cmd_import(api: Api, args: argparse.Namespace) -> int:
    body = read_json_file(args.file, "import")
    api.call("POST", "/service/import", body=body)
    print(f"imported {args.file}")
    return 0


def cmd_export(api: Api, args: argparse.Namespace) -> int:
    """Stdout by default so it pipes; `to-file` without -f writes `./.aog` as AOG does."""
    body = {k: v for k, v in (("service_name", args.service), ("provider_name", args.provider),
                              ("model_name", args.model)) if v}
    data = api.call("POST", "/service/export", body=body)  # the document, bare (as AOG)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    target = args.file or (".aog" if args.target == "to-file" else None)
    if target is None:
        sys.stdout.write(text)
        return 0
    Path(target).write_text(text)
    print(f"exported to {target}", file=sys.stderr)
    return 0


def cmd_plugin(api: Api, args: argparse.Namespace) -> int:
    """Plugin control; `install` sends an absolute path, since the server resolves it
    from its own working directory."""
    action = args.action
    if action == "list":
        data = api.call("GET", "/plugin/list") or []
        if args.json:
            dump_json(data)
            return 0
        table(["NAME", "STATE", "ENABLED", "PID", "VERSION", "SERVICES", "DESCRIPTION"],
              [[p.get("name"), p.get("state") or PLUGIN_STATUS.get(p.get("status"), "?"),
                {True: "yes", False: "no"}.get(p.get("enabled"), ""),
                p.get("pid"), p.get("version"), ",".join(p.get("services") or []),
                _short(p.get("description") or "", 50)] for p in data])
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


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- chat -------------------------------------------------------------------------------


def _chat_turn(api: Api, args: argparse.Namespace, history: list[dict[str, str]],
               out: TextIO) -> str:
    """Send the conversation, print the answer as it streams, return its text."""
    body: dict[str, Any] = {"messages": history, "stream": True}
    if args.model:
        body["model"] = args.model
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.temperature is not None:
        body["temperature"] = args.temperature
    parts: list[str] = []
    with api.stream(f"{BASE}/services/chat", body,
                    headers={"Accept": "text/event-stream"}) as resp:
        if args.verbose:
            print(f"[served by {resp.headers.get('x-aogstream-provider', '?')}]",
                  file=sys.stderr)
        ctype = resp.headers.get("content-type", "")
        events: Iterator[dict[str, Any]]
        if ctype.startswith("application/json"):  # a provider that cannot stream
            events = iter([json.loads(resp.read())])
        else:
            events = sse_events(resp)
        for ev in events:
            if ev.get("finish_reason") == "error" or (
                    "business_code" in ev and "message" in ev and "finished" in ev):
                if parts:
                    out.write("\n")
                raise CliError(f"error: {ev.get('message')}")
            msg = ev.get("message")
            piece = msg.get("content", "") if isinstance(msg, dict) else ""
            if piece:
                parts.append(piece)
                out.write(piece)
                out.flush()
    out.write("\n")
    out.flush()
    return "".join(parts)


def cmd_chat(api: Api, args: argparse.Namespace) -> int:
    """One message, or a conversation over stdin lines whose history goes with every
    turn (a chat model has no memory of its own)."""
    out = sys.stdout
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    if args.message:
        history.append({"role": "user", "content": " ".join(args.message)})
        try:
            _chat_turn(api, args, history, out)
        except KeyboardInterrupt:
            out.write("\n")
            return EXIT_INTERRUPTED
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat with aogstream; /clear forgets the conversation, /bye (or Ctrl-D) leaves")
    while True:
        try:
            line = input(">>> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not interactive and not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/bye", "/exit", "/quit"):
            return 0
        if text == "/clear":
            history = [m for m in history if m["role"] == "system"]
            continue
        history.append({"role": "user", "content": text})
        try:
            answer = _chat_turn(api, args, history, out)
        except KeyboardInterrupt:
            out.write("\n")
            history.pop()
            continue
        except CliError as err:
            history.pop()
            if not interactive or err.message.startswith("aogstream is not running"):
                raise
            print(err.message, file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": answer})


# ---- speech to text ---------------------------------------------------------------------


def cmd_transcribe(api: Api, args: argparse.Namespace) -> int:
    """A whole file through `speech-to-text`, or a recording played into the realtime
    socket as a microphone would (`--mic-file`)."""
    if args.mic_file:
        return _transcribe_realtime(api, args)
    if not args.file:
        raise CliError("transcribe needs an audio file (or --mic-file <raw PCM16 16 kHz>)", 2)
    try:
        audio = Path(args.file).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read audio file {args.file}: {exc.strerror or exc}", 2) from exc
    body: dict[str, Any] = {"audio": base64.b64encode(audio).decode()}
    if Path(args.file).suffix.lower() in (".raw", ".pcm"):
        body.update({"format": "pcm", "sample_rate": args.rate})
    if args.language:
        body["language"] = args.language
    if args.model:
        body["model"] = args.model
    try:
        resp = api.http.post(f"{BASE}/services/speech-to-text", json=body,
                             timeout=httpx.Timeout(600.0, connect=5.0))
    except httpx.ConnectError as exc:
        raise not_running(api.url) from exc
    if resp.status_code >= 400:
        raise CliError(f"error: {_message(resp)}")
    result = resp.json()
    if args.json:
        dump_json(result)
    else:
        print(str(result.get("text", "")).strip())
    return 0


class _Captions:
    """Realtime results on a terminal: the current partial redrawn on one line, each
    final sentence on a line of its own."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.clear = "\r\x1b[K" if out.isatty() else "\r"
        self.partial = False

    def show(self, text: str, final: bool) -> None:
        if final:
            self.out.write(f"{self.clear if self.partial else ''}{text}\n")
            self.partial = False
        else:
            self.out.write(f"{self.clear}{text}")
            self.partial = True
        self.out.flush()

    def end(self) -> None:
        if self.partial:
            self.out.write("\n")
            self.out.flush()
            self.partial = False


def mic_pcm(path: str) -> bytes:
    """The file for `--mic-file` as PCM16 16 kHz mono: a WAV's header is read and its
    audio resampled (first channel); anything else must already be raw PCM16 16 kHz."""
    from aogstream.errors import GatewayError
    from aogstream.http.audio import resample_pcm16, wav_pcm

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", 2) from exc
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            pcm, rate = wav_pcm(data)
        except GatewayError:
            raise CliError(f"{path} is not a readable 16-bit PCM WAV; --mic-file takes "
                           "16-bit PCM (convert it, e.g. `sox in.wav -b 16 out.wav`)",
                           2) from None
        return resample_pcm16(pcm, rate, RATE)
    if data[:4] in (b"fLaC", b"OggS") or data[:3] == b"ID3":
        raise CliError(f"{path} is compressed audio; --mic-file takes a WAV or raw PCM16 "
                       f"{RATE} Hz mono (or transcribe it without --mic-file)", 2)
    return data


def _transcribe_realtime(api: Api, args: argparse.Namespace) -> int:
    """Play a raw PCM16 16 kHz file into the realtime socket in 20 ms frames, paced like
    a microphone, while a reader thread prints the results as they come."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    pcm = mic_pcm(args.mic_file)
    ws_url = "ws" + api.url[len("http"):] + f"{BASE}/services/speech-to-text-ws"
    run = {"task": "speech-to-text-ws", "action": "run-task",
           "parameters": {"format": "pcm", "sample_rate": RATE,
                          "language": args.language or "en"}}
    if args.model:
        run["model"] = args.model
    captions = _Captions(sys.stdout)
    failure: list[str] = []
    finished = threading.Event()

    def reader(ws: Any) -> None:
        try:
            while True:
                raw = ws.recv(timeout=120)
                if isinstance(raw, bytes):
                    continue
                ev = json.loads(raw)
                if "error" in ev and "header" not in ev:
                    failure.append(str(ev["error"]))
                    return
                header, payload = ev.get("header") or {}, ev.get("payload") or {}
                kind = header.get("event")
                if kind == "result-generated":
                    sent = (payload.get("output") or {}).get("sentence") or {}
                    text = str(sent.get("text", "")).strip()
                    if text:
                        captions.show(text, sent.get("sentence_end", True) is not False)
                elif kind == "task-failed":
                    failure.append(f"{header.get('error_code', 'error')}: "
                                   f"{header.get('error_message', '')}")
                    return
                elif kind == "task-finished":
                    return
        except (ConnectionClosed, TimeoutError, ValueError) as exc:
            failure.append(f"the realtime socket ended early: {exc}")
        finally:
            finished.set()

    try:
        with connect(ws_url, open_timeout=10, max_size=None,
                     additional_headers=api.headers) as ws:
            ws.send(json.dumps(run))
            first = json.loads(ws.recv(timeout=30))
            header = first.get("header") or {}
            if header.get("event") != "task-started":
                msg = first.get("error") or header.get("error_message") or json.dumps(first)
                raise CliError(f"error: {msg}")
            thread = threading.Thread(target=reader, args=(ws,), daemon=True)
            thread.start()
            size = RATE * FRAME_MS // 1000 * 2
            t0 = time.monotonic()
            for i in range(0, len(pcm), size):
                if finished.is_set():
                    break
                ws.send(pcm[i:i + size])
                if args.pace > 0:
                    wait = t0 + (i // size + 1) * FRAME_MS / 1000 / args.pace - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
            if not finished.is_set():
                ws.send(json.dumps({"task": "speech-to-text-ws", "action": "finish-task"}))
            if not finished.wait(120):
                failure.append("no task-finished within 120 s of the end of the audio")
    except KeyboardInterrupt:
        captions.end()
        return EXIT_INTERRUPTED
    except InvalidStatus as exc:
        body = exc.response.body or b""
        try:
            msg = json.loads(body).get("message") or body.decode(errors="replace")
        except ValueError:
            msg = body.decode(errors="replace") or f"HTTP {exc.response.status_code}"
        raise CliError(f"error: {msg}") from exc
    except (OSError, WebSocketException) as exc:
        if isinstance(exc, ConnectionRefusedError):
            raise not_running(api.url) from exc
        raise CliError(f"realtime socket failed: {exc}") from exc
    captions.end()
    if failure:
        raise CliError(f"error: {failure[0]}")
    return 0


# ---- argument parsing -------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """Add the client commands to the `aogstream` parser's subcommands."""
    get = sub.add_parser("get", help="list services, models or service providers")
    gsub = get.add_subparsers(dest="what", required=True)
    gs = gsub.add_parser("services", help="services with their hybrid policy and status")
    gs.add_argument("name", nargs="?", help="only this service")
    gm = gsub.add_parser("models", help="models each provider has")
    gm.add_argument("-p", "--provider", help="only this provider's models")
    gm.add_argument("-s", "--service", help="only this service's models")
    gp = gsub.add_parser("service_providers", aliases=["providers"],
                         help="providers (credentials are never shown)")
    gp.add_argument("-s", "--service", help="only providers of this service")
    gp.add_argument("-p", "--provider", help="only this provider")
    gp.add_argument("-r", "--remote", choices=["local", "remote"], help="only local or remote")
    for p in (gs, gm, gp):
        p.add_argument("--json", action="store_true", help="print the API's JSON")
        p.set_defaults(func=cmd_get)
    gp.set_defaults(what="service_providers")

    edit = sub.add_parser("edit", help="change a service's hybrid policy or a provider")
    esub = edit.add_subparsers(dest="what", required=True)
    es = esub.add_parser("service", help="set the hybrid policy")
    es.add_argument("name", help="service name, e.g. chat")
    es.add_argument("--hybrid-policy", "--hybrid_policy", dest="hybrid_policy", required=True,
                    choices=HYBRID_POLICIES)
    ep = esub.add_parser("provider", aliases=["service_provider"],
                         help="update a provider from a JSON file (only its fields change)")
    ep.add_argument("name", help="provider name")
    ep.add_argument("-f", "--file", required=True, help="JSON file with the fields to change")
    es.set_defaults(func=cmd_edit)
    ep.set_defaults(func=cmd_edit, what="provider")

    delete = sub.add_parser("delete", help="delete a model or a service provider")
    dsub = delete.add_subparsers(dest="what", required=True)
    dm = dsub.add_parser("model", help="delete a model from a provider (its files too)")
    dm.add_argument("name", help="model name")
    dm.add_argument("-p", "--provider", help="provider (default: the one that has it)")
    dm.add_argument("-s", "--for", "--service", dest="service", help="service name")
    dp = dsub.add_parser("service_provider", aliases=["provider"], help="delete a provider")
    dp.add_argument("name", help="provider name")
    dm.set_defaults(func=cmd_delete)
    dp.set_defaults(func=cmd_delete, what="service_provider")

    inst = sub.add_parser("install", help="install a service (local engine and default model, "
                          "or a remote provider), or `install service_provider -f file.json`")
    inst.add_argument("service", help="service name (chat, embed, ...) or service_provider")
    inst.add_argument("-r", "--remote", action="store_true", help="use a remote provider")
    inst.add_argument("--name", help="provider name (remote default: remote_<flavor>_<service>)")
    inst.add_argument("--flavor", help="API flavor or plugin name of the provider")
    inst.add_argument("--remote-url", "--remote_url", dest="remote_url", help="remote API URL")
    inst.add_argument("--method", default="POST", help="HTTP method of the remote API")
    inst.add_argument("--auth-type", "--auth_type", dest="auth_type", choices=AUTH_TYPES)
    inst.add_argument("--auth-key", "--auth_key", dest="auth_key",
                      help="credentials as a JSON object string, e.g. '{\"api_key\": \"...\"}'")
    inst.add_argument("--model", help="model to pull instead of the default")
    inst.add_argument("--skip-model", "--skip_model", dest="skip_model", action="store_true",
                      help="do not pull a model")
    inst.add_argument("-f", "--file", help="provider JSON file (install service_provider)")
    inst.set_defaults(func=cmd_install)

    pull = sub.add_parser("pull", help="pull a model with a live progress bar")
    pull.add_argument("model", help="model name")
    pull.add_argument("-f", "--for", dest="service", required=True, help="service, e.g. chat")
    pull.add_argument("-p", "--provider", help="provider (default: the service's only one)")
    pull.add_argument("-r", "--remote", action="store_true", help="a remote provider's model")
    pull.set_defaults(func=cmd_pull)

    imp = sub.add_parser("import", help="import services and providers from a .aog file")
    imp.add_argument("file", help=".aog JSON file (from `aogstream export`)")
    imp.set_defaults(func=cmd_import)
    exp = sub.add_parser("export", help="export services and providers (never credentials)")
    exp.add_argument("target", nargs="?", choices=["to-file", "to-stdout"],
                     help="AOG's spelling; default: stdout unless -f is given")
    exp.add_argument("-f", "--file", help="write here instead of stdout")
    exp.add_argument("--service", help="only this service")
    exp.add_argument("--provider", help="only this provider")
    exp.add_argument("--model", help="only this model")
    exp.set_defaults(func=cmd_export)

    plugin = sub.add_parser("plugin", help="list, install and control plugins")
    psub = plugin.add_subparsers(dest="action", required=True)
    p = psub.add_parser("list", help="plugins and their state")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = psub.add_parser("info", help="one plugin's details")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="print the API's JSON")
    p = psub.add_parser("install", help="install a plugin folder or .tar.gz/.zip archive")
    p.add_argument("path", help="plugin folder or archive")
    for action, text in (("enable", "enable (and start) a plugin, also after restarts"),
                         ("disable", "stop a plugin and keep it off, also after restarts"),
                         ("load", "load a plugin from <data dir>/plugins or start a stopped "
                                  "one"),
                         ("stop", "stop a running plugin")):
        p = psub.add_parser(action, help=text)
        p.add_argument("name")
    p = psub.add_parser("delete", help="stop and delete plugins and their providers")
    p.add_argument("names", nargs="+", metavar="name")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    plugin.set_defaults(func=cmd_plugin)

    chat = sub.add_parser("chat", help="chat in the terminal; answers stream as they come")
    chat.add_argument("message", nargs="*", help="one message (none: read lines from stdin)")
    chat.add_argument("--model", help="model (default: the service's default)")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-tokens", type=int, help="answer length limit")
    chat.add_argument("--temperature", type=float, help="sampling temperature")
    chat.add_argument("-v", "--verbose", action="store_true",
                      help="say which provider served each answer")
    chat.set_defaults(func=cmd_chat)

    tr = sub.add_parser("transcribe", help="speech to text from a file, or realtime from a "
                        "raw PCM16 16 kHz mono recording played as a microphone")
    tr.add_argument("file", nargs="?", help="audio file (WAV, MP3, FLAC, ...; .raw/.pcm = PCM16)")
    tr.add_argument("--mic-file", help="a WAV (resampled to 16 kHz mono) or raw PCM16 16 kHz "
                    "mono file, streamed in 20 ms frames")
    tr.add_argument("--pace", type=float, default=1.0,
                    help="--mic-file speed: 1 = real time (default), 0 = as fast as possible")
    tr.add_argument("--rate", type=int, default=RATE, help="sample rate of .raw/.pcm files")
    tr.add_argument("--language", help="language code (the shipped engines: en)")
    tr.add_argument("--model", help="model (default: the service's default)")
    tr.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    tr.set_defaults(func=cmd_transcribe)


def run(args: argparse.Namespace) -> int:
    """Run one client command; errors become one line on stderr and an exit code."""
    func: Callable[[Api, argparse.Namespace], int] = args.func
    try:
        api = Api(server_url())
    except CliError as err:
        print(err.message, file=sys.stderr)
        return err.code
    try:
        return func(api, args)
    except CliError as err:
        sys.stdout.flush()
        print(err.message, file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        api.close()
