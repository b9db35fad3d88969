"""The request guard's policy: a pure function from a request's facts to a decision.

Everything the guard decides (Host against DNS rebinding, Origin and Sec-Fetch-Site
against cross-site pages, CORS for listed origins on the service routes, the management
and client API keys) is `decide(policy, request)`: no I/O, no clock, no state, so the
whole policy is unit-tested as a table (tests/test_security_origin.py) and the ASGI
wrapper in `http.guard` only gathers the facts and acts on the answer. Why each rule
exists is in `http.guard`'s docstring.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import re
from urllib.parse import urlsplit

import attrs

from aogstream import SPEC_VERSION, config, errors
from aogstream.http.front_doors import is_front_door

BASE = f"/aog/{SPEC_VERSION}"
SERVICES_PREFIX = f"{BASE}/services/"
CPA_MANAGEMENT = "/v0/management"  # CLIProxyAPI's management API (http.native_management)
CPA_RESOURCES = "/v0/resource/plugins/"  # native plugins' pages (no key, as in CPA)
CONSOLE_FILES = "/console/"  # the web console's static files (http.console): no data
PUBLIC_PATHS = frozenset({"/", "/health", "/version", f"{BASE}/health", f"{BASE}/version"})
_NAME = re.compile(r"^[a-z0-9_.-]+$")


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



def shorten(value: str) -> str:
    """`value` cut to 100 characters for a message or a log line (a client chose it)."""
    return value if len(value) <= 100 else value[:100] + "..."



def decide(policy: Policy, req: Request) -> Decision:
    """The guard's whole policy: Host, then Origin/Sec-Fetch-Site (with CORS for listed
    origins on service routes), then keys."""
    if req.host is not None and not host_header_ok(policy, req.host):
        hp = split_host(req.host)
        name = hp[0] if hp else req.host
        return Decision(403, errors.HOST_REFUSED, (
            f"Host {shorten(req.host)!r} is not a name of this gateway (refused to stop "
            f"DNS rebinding); if clients really reach it by that name, allow it with "
            f"AOGSTREAM_ALLOWED_HOSTS={shorten(name)} or `server start --allowed-host "
            f"{shorten(name)}`"))
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
                f"management routes are never open to other origins ({shorten(origin)} is "
                f"listed for the service routes only); use the CLI or a server-side client"))
        return Decision(403, errors.ORIGIN_REFUSED, (
            f"cross-origin requests from {shorten(origin or 'this page')} are not allowed; "
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
    return f"request from {shorten(who)} refused (cross-site requests are not allowed); {hint}"




def describe(policy: Policy) -> str:
    """One log line of what the guard enforces (never a key)."""
    return json.dumps({
        "allowed_hosts": ["loopback", *sorted(policy.allowed_hosts)],
        "any_ip_host": policy.any_ip_host,
        "cors_origins": sorted(policy.cors_origins),
        "management_key_required": policy.require_management_key,
        "api_keys_required": bool(policy.api_keys),
    })
