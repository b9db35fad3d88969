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

The pure policy is `guard_policy.decide`, a function of the request's facts
(unit-tested as a table); the failed-key ban, state across requests, is
`key_ban.KeyBan`; this module is the settings (keys, the policy of a configuration)
and the thin ASGI wrapper that gathers the facts and acts on the decision. The
policy's names are re-exported here, where callers and tests import them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import attrs
import trio

from aogstream import config, errors
from aogstream.asgi_types import ASGIApp, Message, Receive, Scope, Send
from aogstream.config import Config
from aogstream.http.asgi import CLOSE_AFTER, JSON_HEADERS, send_json
from aogstream.http.flavor_errors import error_body
from aogstream.http.front_doors import API_FLAVORS_PREFIX, is_front_door
from aogstream.http.guard_policy import (
    CPA_MANAGEMENT,
    Decision,
    Policy,
    Request,
    decide,
    describe,
    normalise_origin,
    route_kind,
    shorten,
    split_host,
)
from aogstream.http.key_ban import KeyBan

__all__ = [
    "Decision", "Guard", "GuardConfigError", "Keys", "Policy", "Request", "decide",
    "describe", "load_keys", "policy_for", "request_facts", "route_kind", "split_host",
]

log = logging.getLogger(__name__)

LOG_EVERY = 10.0
FRONTEND_AUTH_BODY = 32 * 1024 * 1024  # bodies longer than this reach frontend auth as null
CORS_METHODS = b"GET, POST, OPTIONS"
CORS_MAX_AGE = b"600"
CORS_EXPOSE = b"x-aogstream-provider, x-aogstream-plugin"
_TOKEN_LIST = re.compile(rb"^[A-Za-z0-9!#$%&'*+.^_`|~, -]*$")


class GuardConfigError(Exception):
    """The security settings do not allow starting (said how to fix them)."""


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
        self._ban = KeyBan()  # CPA's failed-key ban, per serving process

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
                shorten(req.path), decision.message)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        req = request_facts(scope)
        decision = decide(self.policy, req)
        client = (scope.get("client") or ("",))[0] or ""
        if req.path.startswith(CPA_MANAGEMENT) and not decision.preflight:
            decision = self._ban.check(client, decision)
        if self.frontend is not None and not decision.preflight and \
                (decision.allowed or decision.bcode is errors.KEY_REQUIRED) and \
                route_kind(req.path) == "service":
            # which plugins decide is known without waiting: a request no plugin has to
            # judge (none offers frontend auth, or a client key passes) goes on without
            # a coroutine for it
            plugins, exclusive = self.frontend.providers()
            if plugins and not (decision.allowed and self.policy.api_keys and not exclusive):
                decision, receive = await self._frontend_auth(scope, receive, req,
                                                              decision, plugins)
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

    async def _frontend_auth(self, scope: Scope, receive: Receive, req: Request,
                             decision: Decision, plugins: list[Any]
                             ) -> tuple[Decision, Receive]:
        """Native plugins' frontend auth (`host.native.frontend`): with a plugin that
        offers it (`plugins`, those that decide), a service request passes when a
        plugin accepts it, or (unless one is exclusive) when it carries a client API
        key the gateway accepts (the caller lets that one through without asking)."""
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
