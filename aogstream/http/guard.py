"""The request guard: where a request comes from, and who may manage.

A gateway on loopback is still reachable by every web page the user opens: a page can
send simple requests (GET, or a POST with a form or text/plain body) cross-site without
a preflight, open WebSockets to any origin, and with DNS rebinding make its own name
point at 127.0.0.1. So, in front of every route and WebSocket upgrade, in every serving
process:

- **Host**: only the gateway's own names are accepted (loopback names and addresses with
  any port, the bound address, names the operator lists in `AOGSTREAM_ALLOWED_HOSTS` or
  `--allowed-host`; when bound to a wildcard address any IP literal too, since DNS
  rebinding needs a name). This stops DNS rebinding.
- **Origin / Sec-Fetch-Site**: a request a browser marks as coming from another site is
  refused, GETs and WebSocket upgrades included: an `Origin` other than the gateway's own
  (`Origin` matching the request's `Host`), `Origin: null`, or `Sec-Fetch-Site:
  cross-site`/`same-site`. Browsers send `Sec-Fetch-Site` on every request (Chrome 76+,
  Firefox 90+, Safari 16.4+) and `Origin` on every POST and WebSocket upgrade, so a
  cross-site `<form method=post enctype=text/plain>`, `fetch(..., {mode: "no-cors"})` and
  `<img src>` all carry one of them. Clients that send neither (curl, the CLI, SDKs, AOG's
  own clients) are not browsers and pass unchanged.
- **CORS**: origins the operator lists (`AOGSTREAM_CORS_ORIGINS`) get real CORS on the
  service routes only (preflight answered here; every answer, streams included, carries
  `Access-Control-Allow-Origin`), and their WebSocket upgrades to services are accepted.
  Management routes never: they stay refused for any foreign origin.
- **Keys**: the management key (`Authorization: Bearer` or `X-Management-Key`) on every
  management route when required (always beyond loopback; on loopback with
  `AOGSTREAM_REQUIRE_MANAGEMENT_KEY=1`), and on CLIProxyAPI's management API
  (`/v0/management/...`) always, on loopback too, as CPA does (its refusals in CPA's
  words: 401 `missing management key` / `invalid management key`, 403 `remote
  management key not set`); native plugins' resources (`/v0/resource/plugins/...`)
  need no key, as in CPA, but the cross-site rules hold for them; client API keys
  (`Authorization: Bearer` or `x-api-key`) on the service routes whenever
  `AOGSTREAM_API_KEYS` is set (it must be beyond loopback). The management key is
  accepted on service routes too. Comparisons are constant-time. A client address
  that sent a wrong key to CPA's management API 5 times is refused there for 30
  minutes (CPA's rule). Native plugins that offer frontend auth decide who may call the
  service routes (`host.native.frontend`).

`decide` is the whole policy as a pure function of the request's facts (unit-tested as
a table); `Guard` is the thin ASGI wrapper that gathers the facts and acts on the
decision.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import logging
import os
import re
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from aogstream import SPEC_VERSION, config, errors
from aogstream.asgi_types import ASGIApp, Message, Receive, Scope, Send
from aogstream.config import Config
from aogstream.http.asgi import CLOSE_AFTER, JSON_HEADERS, send_json
from aogstream.http.flavor_errors import error_body
from aogstream.http.front_doors import API_FLAVORS_PREFIX, is_front_door

log = logging.getLogger(__name__)

BASE = f"/aog/{SPEC_VERSION}"
SERVICES_PREFIX = f"{BASE}/services/"
CPA_MANAGEMENT = "/v0/management"  # CLIProxyAPI's management API (http.native_management)
CPA_RESOURCES = "/v0/resource/plugins/"  # native plugins' pages (no key, as in CPA)
CONSOLE_FILES = "/console/"  # the web console's static files (http.console): no data
PUBLIC_PATHS = frozenset({"/", "/health", "/version", f"{BASE}/health", f"{BASE}/version"})

LOG_EVERY = 10.0
BAN_AFTER = 5  # wrong management keys from one address on CPA's API …
BAN_FOR = 30 * 60.0  # … refuse it this long (CPA's rule)
FRONTEND_AUTH_BODY = 32 * 1024 * 1024  # bodies longer than this reach frontend auth as null
CORS_METHODS = b"GET, POST, OPTIONS"
CORS_MAX_AGE = b"600"
CORS_EXPOSE = b"x-aogstream-provider, x-aogstream-plugin"
_NAME = re.compile(r"^[a-z0-9_.-]+$")
_TOKEN_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~, -]*$")


class GuardConfigError(Exception):
    """The security settings do not allow starting (said how to fix them)."""


# ---- the facts and the policy ---------------------------------------------------------


@attrs.frozen(cache_hash=True)
class Policy:
    """What this gateway accepts. Hosts and origins are normalised (lower case; origins
    as `scheme://host:port`)."""

    allowed_hosts: frozenset[str] = frozenset()
    any_ip_host: bool = False
    cors_origins: frozenset[str] = frozenset()
    management_key: str = ""
    require_management_key: bool = False
    api_keys: tuple[str, ...] = ()


@attrs.frozen
class Request:
    """The facts of one request the decision needs (header values as sent, or None)."""

    path: str
    method: str = "GET"
    websocket: bool = False
    host: str | None = None
    origin: str | None = None
    fetch_site: str | None = None
    preflight: bool = False  # OPTIONS with Access-Control-Request-Method
    credentials: tuple[str, ...] = ()  # Bearer token, X-Management-Key, x-api-key values


@attrs.frozen
class Decision:
    """`status` 0: serve it (adding CORS headers for `cors_origin` when set);
    `preflight`: answer the CORS preflight here; otherwise refuse with `status`."""

    status: int = 0
    bcode: errors.Bcode | None = None
    message: str = ""
    cors_origin: str = ""
    preflight: bool = False
    cpa_error: str = ""  # the `error` of a refusal on CPA's routes (/v0/...)

    @property
    def allowed(self) -> bool:
        return self.status == 0


def route_kind(path: str) -> str:
    """"service" (invocations and front doors), "public" (health, version, the console),
    "resource" (native plugins' pages) or "management" (everything else, unknown paths
    included: fail closed)."""
    if path.startswith(SERVICES_PREFIX) or is_front_door(path):
        return "service"
    if path in PUBLIC_PATHS:
        return "public"
    if path.startswith(CONSOLE_FILES) and "/" not in path[len(CONSOLE_FILES):]:
        return "public"
    if path.startswith(CPA_RESOURCES) and "/../" not in path + "/":
        return "resource"
    return "management"


def split_host(value: str) -> tuple[str, int | None] | None:
    """`Host` (or an origin's netloc) as (lower-case name without brackets, port), or
    None when it is not a well-formed host."""
    v = value.strip().lower()
    if not v or len(v) > 300:
        return None
    if v.startswith("["):
        end = v.find("]")
        if end < 0:
            return None
        name, rest = v[1:end], v[end + 1:]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    else:
        name, sep, port_text = v.partition(":")
        rest = sep + port_text
        if not _NAME.match(name):
            return None
    if not rest:
        return name, None
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        return None
    port = int(rest[1:])
    return (name, port) if 0 < port < 65536 else None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def host_allowed(policy: Policy, name: str) -> bool:
    """Loopback names and addresses, the listed names, and IP literals when bound to
    a wildcard address."""
    if name in config.LOOPBACK_NAMES or name.endswith(".localhost"):
        return True  # browsers resolve *.localhost to loopback themselves
    if name in policy.allowed_hosts:
        return True
    ip = _ip(name)
    if ip is None:
        return False
    if ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped
                          and ip.ipv4_mapped.is_loopback):
        return True
    return policy.any_ip_host


@functools.lru_cache(maxsize=512)
def host_header_ok(policy: Policy, host: str) -> bool:
    """Whether a `Host` value names this gateway (cached: clients send the same few
    values, and parsing IP addresses is most of the guard's cost per request)."""
    hp = split_host(host)
    return hp is not None and host_allowed(policy, hp[0])


def normalise_origin(origin: str) -> str | None:
    """`scheme://host:port` (default port filled in), or None if not an origin."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or parts.path not in ("", "/") or parts.query \
            or parts.fragment or "@" in parts.netloc:
        return None
    hp = split_host(parts.netloc)
    if hp is None:
        return None
    name, port = hp
    port = port or (443 if scheme == "https" else 80)
    shown = f"[{name}]" if ":" in name else name
    return f"{scheme}://{shown}:{port}"


def same_origin(origin: str, host: str | None) -> bool:
    """Whether `Origin` is the gateway's own origin as the browser reached it: its
    host and port are the request's `Host` (a `Host` without a port matches the
    scheme's default port)."""
    if host is None:
        return False
    norm = normalise_origin(origin)
    hp = split_host(host)
    if norm is None or hp is None:
        return False
    scheme, rest = norm.split("://", 1)
    o_host, o_port = split_host(rest) or ("", None)
    name, port = hp
    if o_host != name:
        return False
    return o_port == (port if port is not None else (443 if scheme == "https" else 80))


def key_matches(presented: tuple[str, ...], keys: tuple[str, ...]) -> bool:
    """Whether any presented credential equals any key, comparing every pair in
    constant time (no early exit that would tell which one nearly matched)."""
    found = False
    for p in presented:
        pb = p.encode("utf-8", "surrogateescape")
        for k in keys:
            if k and hmac.compare_digest(pb, k.encode()):
                found = True
    return found


def _short(value: str) -> str:
    return value if len(value) <= 100 else value[:100] + "..."


def decide(policy: Policy, req: Request) -> Decision:
    """The guard's whole policy: Host, then Origin/Sec-Fetch-Site (with CORS for listed
    origins on service routes), then keys."""
    if req.host is not None and not host_header_ok(policy, req.host):
        hp = split_host(req.host)
        name = hp[0] if hp else req.host
        return Decision(403, errors.HOST_REFUSED, (
            f"Host {_short(req.host)!r} is not a name of this gateway (refused to stop "
            f"DNS rebinding); if clients really reach it by that name, allow it with "
            f"AOGSTREAM_ALLOWED_HOSTS={_short(name)} or `server start --allowed-host "
            f"{_short(name)}`"))
    kind = route_kind(req.path)
    origin = req.origin
    cors = ""
    if origin is not None and kind == "service":
        norm = normalise_origin(origin)
        if norm is not None and norm in policy.cors_origins:
            cors = origin
    if req.preflight:
        if cors:
            return Decision(preflight=True, cors_origin=cors)
        if origin is not None and kind == "management" \
                and normalise_origin(origin) in policy.cors_origins:
            return Decision(403, errors.ORIGIN_REFUSED, (
                f"management routes are never open to other origins ({_short(origin)} is "
                f"listed for the service routes only); use the CLI or a server-side client"))
        return Decision(403, errors.ORIGIN_REFUSED, (
            f"cross-origin requests from {_short(origin or 'this page')} are not allowed; "
            f"the operator can allow an origin for the service routes with "
            f"AOGSTREAM_CORS_ORIGINS=<scheme://host:port>"))
    if not cors:
        site = (req.fetch_site or "").strip().lower()
        if origin is not None:
            if origin.strip().lower() == "null":
                return Decision(403, errors.ORIGIN_REFUSED, (
                    "requests with Origin: null (sandboxed pages, file: URLs) are refused; "
                    "call the gateway from a server-side client or an allowed origin"))
            if not same_origin(origin, req.host):
                return Decision(403, errors.ORIGIN_REFUSED, _foreign(origin, kind))
        if site in ("cross-site", "same-site"):
            return Decision(403, errors.ORIGIN_REFUSED, _foreign(f"a {site} page", kind))
    if kind == "management" and (req.path == CPA_MANAGEMENT
                                 or req.path.startswith(CPA_MANAGEMENT + "/")):
        if not policy.management_key:
            return Decision(403, errors.KEY_REQUIRED, (
                "this gateway has no management key; set AOGSTREAM_MANAGEMENT_KEY or put "
                "one in the file management.key in the gateway's data directory"),
                cpa_error="remote management key not set")
        if not key_matches(req.credentials, (policy.management_key,)):
            return Decision(401, errors.KEY_REQUIRED, (
                ("the management key is wrong; " if req.credentials else
                 "the management API needs the management key; ")
                + "send it as `Authorization: Bearer <key>` or `X-Management-Key: <key>` "
                "(AOGSTREAM_MANAGEMENT_KEY, or the file management.key in the gateway's "
                "data directory)"),
                cpa_error="invalid management key" if req.credentials
                else "missing management key")
    elif kind == "management" and policy.require_management_key:
        if not key_matches(req.credentials, (policy.management_key,)):
            return Decision(401, errors.KEY_REQUIRED, (
                ("the management key is wrong; " if req.credentials else
                 "this management route needs the management key; ")
                + "send it as `Authorization: Bearer <key>` or `X-Management-Key: <key>` "
                "(AOGSTREAM_MANAGEMENT_KEY, or the file management.key in the gateway's "
                "data directory, which the aogstream CLI reads by itself)"))
    if kind == "service" and policy.api_keys:
        if not key_matches(req.credentials, (*policy.api_keys, policy.management_key)):
            return Decision(401, errors.KEY_REQUIRED, (
                ("the API key is wrong; " if req.credentials else
                 "this gateway needs an API key; ")
                + "send one of the keys in AOGSTREAM_API_KEYS as `Authorization: Bearer "
                "<key>` or `x-api-key: <key>`"))
    return Decision(cors_origin=cors)


def _foreign(who: str, kind: str) -> str:
    if kind == "service":
        hint = ("if a web app of yours calls the service routes from there, the operator "
                "can allow its origin with AOGSTREAM_CORS_ORIGINS=<scheme://host:port>")
    else:
        hint = ("management routes are never open to other sites; use the CLI or a "
                "server-side client")
    return f"request from {_short(who)} refused (cross-site requests are not allowed); {hint}"


# ---- settings -------------------------------------------------------------------------


@attrs.frozen
class Keys:
    management_key: str
    api_keys: tuple[str, ...]
    source: str = ""  # where the management key came from (for the log; never the key)


def load_keys(cfg: Config, *, generate: bool) -> Keys:
    """The management key (`AOGSTREAM_MANAGEMENT_KEY`, else the data dir's key file,
    generated there on a loopback start when `generate`) and the client API keys, after
    checking that the settings allow serving on `cfg.host`.

    Beyond loopback both must exist before the start: a key generated by this very
    start would be one the operator has never seen, so it does not count."""
    env_key = os.environ.get(config.MANAGEMENT_KEY_ENV, "").strip()
    api_keys = tuple(k.strip() for k in os.environ.get(config.API_KEYS_ENV, "").split(",")
                     if k.strip())
    for origin in cfg.cors_origins:
        if normalise_origin(origin) is None:
            raise GuardConfigError(
                f"AOGSTREAM_CORS_ORIGINS entry {origin!r} is not an origin; write "
                f"scheme://host[:port], e.g. http://localhost:3000")
    key = env_key or config.read_management_key(cfg.data_dir)
    if not config.is_loopback_host(cfg.host):
        if not key:
            raise GuardConfigError(
                f"refusing to listen on {cfg.host} (beyond loopback) without a management "
                f"key: set {config.MANAGEMENT_KEY_ENV}, or put one in the file "
                f"{config.MANAGEMENT_KEY_FILE} of the data directory (a start on 127.0.0.1 "
                f"generates it)")
        if not api_keys:
            raise GuardConfigError(
                f"refusing to listen on {cfg.host} (beyond loopback) without client API "
                f"keys: set {config.API_KEYS_ENV}=<key>[,<key>...]; clients send one as "
                f"`Authorization: Bearer <key>` or `x-api-key: <key>`")
    elif not env_key and generate:
        key = config.ensure_management_key(cfg.data_dir)  # also tightens its mode
    if generate:
        config.tighten_mode(cfg.data_dir / config.MANAGEMENT_KEY_FILE, 0o600)
    source = (config.MANAGEMENT_KEY_ENV if env_key else
              str(cfg.data_dir / config.MANAGEMENT_KEY_FILE) if key else "")
    return Keys(key, api_keys, source)


def policy_for(cfg: Config, keys: Keys) -> Policy:
    """The policy of a gateway serving `cfg` with `keys`."""
    hosts = {h.strip().strip("[]").lower().rstrip(".") for h in cfg.allowed_hosts if h.strip()}
    bound = cfg.host.strip().strip("[]").lower()
    wildcard = bound in ("", "0.0.0.0", "::")
    if not wildcard:
        hosts.add(bound)
    return Policy(
        allowed_hosts=frozenset(hosts),
        any_ip_host=wildcard,
        cors_origins=frozenset(n for o in cfg.cors_origins
                               if (n := normalise_origin(o)) is not None),
        management_key=keys.management_key,
        require_management_key=cfg.require_management_key
        or not config.is_loopback_host(cfg.host),
        api_keys=keys.api_keys,
    )


# ---- the ASGI wrapper -----------------------------------------------------------------


def request_facts(scope: Scope) -> Request:
    """What `decide` needs, read from an ASGI scope."""
    host = origin = site = None
    acrm = False
    creds: list[str] = []
    for k, v in scope.get("headers", ()):
        if k == b"host":
            host = v.decode("latin-1")
        elif k == b"origin":
            origin = v.decode("latin-1")
        elif k == b"sec-fetch-site":
            site = v.decode("latin-1")
        elif k == b"access-control-request-method":
            acrm = True
        elif k == b"authorization":
            scheme, _, token = v.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                creds.append(token.strip())
        elif k in (b"x-management-key", b"x-api-key"):
            if v.strip():
                creds.append(v.decode("latin-1").strip())
        elif k == b"sec-websocket-protocol":
            # browsers cannot set headers: OpenAI's realtime clients send the key as a
            # subprotocol `openai-insecure-api-key.<key>`
            for proto in v.decode("latin-1").split(","):
                key = proto.strip().removeprefix("openai-insecure-api-key.")
                if key != proto.strip() and key:
                    creds.append(key)
    method = scope.get("method", "GET")
    return Request(path=scope.get("path", ""), method=method,
                   websocket=scope["type"] == "websocket", host=host, origin=origin,
                   fetch_site=site, preflight=method == "OPTIONS" and acrm,
                   credentials=tuple(creds))


def _flavor_of(path: str) -> str:
    """Which error shape a refused request's client parses."""
    if path.startswith(API_FLAVORS_PREFIX):
        return path[len(API_FLAVORS_PREFIX):].split("/", 1)[0] or "aog"
    if path.startswith("/api/"):
        return "ollama"
    if path.startswith("/v1/messages"):  # Anthropic's Messages API
        return "anthropic"
    if is_front_door(path):
        return "openai"
    return "aog"


async def _buffer_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """The request body (None when longer than `limit`), and a `receive` that gives
    the app the same messages again."""
    seen: list[Message] = []
    size = 0
    while True:
        msg = await receive()
        seen.append(msg)
        if msg["type"] != "http.request":
            break
        size += len(msg.get("body", b""))
        if not msg.get("more_body") or size > limit:
            break
    complete = seen[-1]["type"] == "http.request" and not seen[-1].get("more_body")
    body = b"".join(m.get("body", b"") for m in seen if m["type"] == "http.request") \
        if complete and size <= limit else None

    async def replay() -> Message:
        return seen.pop(0) if seen else await receive()

    return body, replay


class Guard:
    """ASGI middleware applying `decide` to every HTTP request and WebSocket upgrade."""

    def __init__(self, app: ASGIApp, policy: Policy, frontend: Any = None) -> None:
        """`frontend`: native plugins' frontend auth (`host.native.frontend.
        FrontendAuth`), consulted on service routes when a plugin offers it."""
        self.app = app
        self.policy = policy
        self.frontend = frontend
        self._logged: dict[str, float] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # CPA key failures per client

    def _log_refusal(self, req: Request, decision: Decision) -> None:
        """A refusal is worth a warning, but a page firing requests in a loop must not
        flood the log: the same refusal is a warning once per LOG_EVERY seconds."""
        now = trio.current_time()
        level = logging.DEBUG
        if now - self._logged.get(decision.message, -LOG_EVERY) >= LOG_EVERY:
            if len(self._logged) > 1000:
                self._logged.clear()
            self._logged[decision.message] = now
            level = logging.WARNING
        log.log(level, "refused %s %s: %s", "WebSocket" if req.websocket else req.method,
                _short(req.path), decision.message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        req = request_facts(scope)
        decision = decide(self.policy, req)
        client = (scope.get("client") or ("",))[0] or ""
        if req.path.startswith(CPA_MANAGEMENT) and not decision.preflight:
            decision = self._ban(client, decision)
        if self.frontend is not None and not decision.preflight and \
                (decision.allowed or decision.bcode is errors.KEY_REQUIRED) and \
                route_kind(req.path) == "service":
            decision, receive = await self._frontend_auth(scope, receive, req, decision)
        if decision.preflight:
            await self._preflight(scope, send, decision.cors_origin)
            return
        if not decision.allowed:
            self._log_refusal(req, decision)
            await self._refuse(scope, receive, send, decision)
            return
        if decision.cors_origin and scope["type"] == "http":
            send = _with_cors(send, decision.cors_origin.encode("latin-1"))
        await self.app(scope, receive, send)

    def _ban(self, client: str, decision: Decision) -> Decision:
        """CPA's failed-key rule on its management API: a client (by IP) that sent a
        wrong key BAN_AFTER times is refused for BAN_FOR seconds, right key or not; a
        right key clears its count. Counted in each serving process."""
        now = trio.current_time()
        count, until = self._failures.get(client, (0, 0.0))
        if until > now:
            left = int(until - now) + 1
            return Decision(403, errors.KEY_REQUIRED, (
                f"too many wrong management keys from this address; try again in "
                f"{left // 60} min {left % 60} s"),
                cpa_error=f"IP banned due to too many failed attempts. Try again in "
                          f"{left}s")
        if decision.cpa_error == "invalid management key":
            count += 1
            if len(self._failures) > 10000:
                self._failures.clear()
            self._failures[client] = (0, now + BAN_FOR) if count >= BAN_AFTER \
                else (count, 0.0)
        elif decision.allowed and client in self._failures:
            del self._failures[client]
        return decision

    async def _frontend_auth(self, scope: Scope, receive: Receive, req: Request,
                             decision: Decision) -> tuple[Decision, Receive]:
        """Native plugins' frontend auth (`host.native.frontend`): with a plugin that
        offers it, a service request passes when a plugin accepts it, or (unless one
        is exclusive) when it carries a client API key the gateway accepts."""
        plugins, exclusive = self.frontend.providers()
        if not plugins or (decision.allowed and self.policy.api_keys and not exclusive):
            return decision, receive
        body: bytes | None = None
        if scope["type"] == "http":
            body, receive = await _buffer_body(receive, FRONTEND_AUTH_BODY)
        who = await self.frontend.authenticate(
            plugins, req.method, req.path, list(scope.get("headers", ())),
            scope.get("query_string", b""), body)
        if who is not None:
            return Decision(cors_origin=decision.cors_origin), receive
        names = ", ".join(p.id for p in plugins)
        return Decision(401, errors.KEY_REQUIRED, (
            f"this gateway lets clients in through the frontend auth of native plugin "
            f"{names}, which did not accept this request; send the credentials it "
            f"expects")), receive

    async def _refuse(self, scope: Scope, receive: Receive, send: Send,
                      decision: Decision) -> None:
        assert decision.bcode is not None
        err = errors.GatewayError(decision.bcode, decision.message)
        path = scope.get("path", "")
        if path.startswith(("/v0/management", "/v0/resource/")):  # CPA's error shape
            body = json.dumps({"error": decision.cpa_error or "forbidden",
                               "message": decision.message}).encode()
        else:
            body = error_body(_flavor_of(path), err)
        extra = [(b"www-authenticate", b"Bearer")] if decision.status == 401 else []
        if scope["type"] == "http":
            await send_json(send, decision.status, body, CLOSE_AFTER + extra)
            return
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": decision.status,
                        "headers": JSON_HEADERS + extra})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008})

    async def _preflight(self, scope: Scope, send: Send, origin: str) -> None:
        requested = b""
        for k, v in scope.get("headers", ()):
            if k == b"access-control-request-headers":
                requested = v
        headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", CORS_METHODS),
            (b"access-control-max-age", CORS_MAX_AGE),
            (b"vary", b"Origin"),
            (b"content-length", b"0"),
        ]
        if requested and _TOKEN_LIST.match(requested):
            headers.append((b"access-control-allow-headers", requested))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        with trio.CancelScope(shield=True):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _with_cors(send: Send, origin: bytes) -> Send:
    """`send` that adds the CORS answer headers to the response start."""

    async def cors_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ())
                       if k.lower() != b"access-control-allow-origin"]
            headers += [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                        (b"access-control-expose-headers", CORS_EXPOSE)]
            message = {**message, "headers": headers}
        await send(message)

    return cors_send


def describe(policy: Policy) -> str:
    """One log line of what the guard enforces (never a key)."""
    return json.dumps({
        "allowed_hosts": ["loopback", *sorted(policy.allowed_hosts)],
        "any_ip_host": policy.any_ip_host,
        "cors_origins": sorted(policy.cors_origins),
        "management_key_required": policy.require_management_key,
        "api_keys_required": bool(policy.api_keys),
    })
