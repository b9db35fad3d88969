"""The go-plugin handshake, as AOG's plugins speak it: one definition for both sides.

The host (`host/process.py`) starts a plugin with the magic cookie in its environment and
reads the plugin's first stdout line; the plugin (`sdk/server.py`) refuses to run without
the cookie and prints that line once it listens. Both sides must agree on every fact
here (the cookie, the protocol versions, the line's fields), so they are written once:
a change on one side only would make a plugin that starts nowhere.

The line is go-plugin's `CORE|APP|NETWORK|ADDRESS|PROTOCOL|CERT[|MUX]`: the go-plugin core
protocol (1), the application protocol (AOG's ProviderService, 1), `unix` or `tcp`, the
address to dial, `grpc` (net/rpc is not spoken), the server's TLS certificate (empty:
no AutoMTLS), and, only when the host asked for gRPC multiplexing, whether the plugin
multiplexes (never, here).
"""

from __future__ import annotations

from collections.abc import Mapping

# AOG's HandshakeConfig (plugin-sdk): a plugin started without it is being run by hand.
COOKIE_KEY = "AOG_PLUGIN"
COOKIE_VALUE = "aog-provider-plugin-v1"
CORE_PROTOCOL_VERSION = 1  # go-plugin's own handshake protocol
APP_PROTOCOL_VERSION = 1  # AOG's ProviderService, the only version either side speaks
# the environment variables go-plugin's host sets for the plugin (and the SDK reads)
PROTOCOL_VERSIONS_ENV = "PLUGIN_PROTOCOL_VERSIONS"
MULTIPLEX_ENV = "PLUGIN_MULTIPLEX_GRPC"
NETWORKS = ("unix", "tcp")
PROTOCOL = "grpc"
MAX_LINE_BYTES = 64 * 1024  # a longer first line is not a handshake
# go-plugin's words for a plugin binary run by hand (Go plugins print the same)
NOT_A_PLUGIN = (
    "This binary is a plugin. These are not meant to be executed directly.\n"
    "Please execute the program that consumes these plugins, which will\n"
    "load any plugins automatically"
)
# a CERT field longer than this is a base64 certificate: the plugin wants AutoMTLS
_MAX_EMPTY_CERT = 50


class HandshakeError(Exception):
    """A handshake that cannot go on: no cookie, or a first line that is not a go-plugin
    handshake this host speaks (the message says which field and what was expected)."""


def check_cookie(environ: Mapping[str, str]) -> None:
    """Raise `HandshakeError(NOT_A_PLUGIN)` unless `environ` holds AOG's magic cookie."""
    if environ.get(COOKIE_KEY) != COOKIE_VALUE:
        raise HandshakeError(NOT_A_PLUGIN)


def format_handshake(network: str, address: str, *, multiplex_asked: bool = False) -> str:
    """The plugin's handshake line (without the newline) for a listener on `address`.

    It announces APP_PROTOCOL_VERSION whatever versions the host offers: go-plugin's rule
    is the highest version both sides speak, else the plugin's own lowest, which the host
    then refuses with a clear error; this plugin speaks only one, so that is the answer
    either way (announcing one of the host's versions would claim a protocol it does not
    speak). `multiplex_asked` (the host set PLUGIN_MULTIPLEX_GRPC=true) adds the MUX
    field, answering that this plugin does not multiplex.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r} (want unix or tcp)")
    line = f"{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|{network}|{address}|{PROTOCOL}|"
    if multiplex_asked:
        line += "|false"
    return line


def parse_handshake(line: str) -> tuple[str, str]:
    """`CORE|APP|NETWORK|ADDRESS|PROTOCOL[|CERT[|MUX]]` → (network, address), or a
    `HandshakeError` naming the field this host cannot accept."""
    parts = line.strip().split("|")
    if len(parts) < 4:
        raise HandshakeError(f"expected CORE|APP|NETWORK|ADDRESS|PROTOCOL, got {line!r}")
    core, app, network, address = parts[:4]
    protocol = parts[4] if len(parts) > 4 else "netrpc"
    if core != str(CORE_PROTOCOL_VERSION):
        raise HandshakeError(
            f"unsupported go-plugin core protocol {core!r} (want {CORE_PROTOCOL_VERSION})")
    if app != str(APP_PROTOCOL_VERSION):
        raise HandshakeError(
            f"plugin speaks app protocol {app!r}; this host speaks {APP_PROTOCOL_VERSION}")
    if network not in NETWORKS:
        raise HandshakeError(f"unknown network {network!r} (want unix or tcp)")
    if protocol != PROTOCOL:
        raise HandshakeError(f"plugin offers {protocol!r}; only grpc is supported")
    if len(parts) > 5 and len(parts[5]) > _MAX_EMPTY_CERT:
        raise HandshakeError("the plugin asked for TLS (AutoMTLS), which this host does not use")
    return network, address
