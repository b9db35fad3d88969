"""The go-plugin handshake module (`aogstream.rpc.handshake`), the one definition the host
and the SDK share: a unit test of one module, no processes.

Proven here: every line the plugin side formats parses back on the host side to the same
network and address (with and without the multiplexing field); the host refuses, with a
message naming the field, a wrong core or app protocol version, a network or protocol it
does not speak, a TLS certificate, and lines that are not handshakes; the SDK's cookie
check refuses a missing or wrong cookie with go-plugin's words and accepts the environment
the host gives its plugins. The real plugin processes speaking this handshake (Python and
Go, either side) are in test_plugin_host.py, test_sdk.py and test_go_interop.py.
"""

import pytest

from aogstream.host.process import plugin_env
from aogstream.rpc.handshake import (
    APP_PROTOCOL_VERSION,
    COOKIE_KEY,
    COOKIE_VALUE,
    CORE_PROTOCOL_VERSION,
    NOT_A_PLUGIN,
    PROTOCOL_VERSIONS_ENV,
    HandshakeError,
    check_cookie,
    format_handshake,
    parse_handshake,
)

ADDRESSES = [("unix", "/tmp/plugin123/plugin.sock"), ("tcp", "127.0.0.1:10042")]


# ---- formatting and parsing --------------------------------------------------------------


@pytest.mark.parametrize("multiplex_asked", [False, True])
@pytest.mark.parametrize(("network", "address"), ADDRESSES)
def test_every_formatted_line_parses_back_to_its_network_and_address(
        network: str, address: str, multiplex_asked: bool) -> None:
    line = format_handshake(network, address, multiplex_asked=multiplex_asked)
    assert "\n" not in line
    assert parse_handshake(line) == (network, address)
    assert parse_handshake(line + "\n") == (network, address)  # as read from stdout


def test_the_line_has_go_plugins_fields_in_order() -> None:
    assert (CORE_PROTOCOL_VERSION, APP_PROTOCOL_VERSION) == (1, 1)
    # CORE|APP|NETWORK|ADDRESS|PROTOCOL|CERT, the certificate empty (no AutoMTLS)
    assert format_handshake("unix", "/tmp/x") == "1|1|unix|/tmp/x|grpc|"
    # asked to multiplex (PLUGIN_MULTIPLEX_GRPC=true), the plugin answers that it does not
    assert format_handshake("tcp", "127.0.0.1:1", multiplex_asked=True) == \
        "1|1|tcp|127.0.0.1:1|grpc||false"


def test_a_plugin_cannot_announce_a_network_the_host_would_refuse() -> None:
    with pytest.raises(ValueError, match="'udp'"):
        format_handshake("udp", "127.0.0.1:1")


def test_the_multiplexing_field_does_not_matter_to_the_host() -> None:
    assert parse_handshake("1|1|unix|/tmp/y|grpc||true") == ("unix", "/tmp/y")
    assert parse_handshake("1|1|unix|/tmp/y|grpc||false") == ("unix", "/tmp/y")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("2|1|unix|/tmp/x|grpc|", ["core protocol", "'2'"]),
        ("1|2|unix|/tmp/x|grpc|", ["app protocol", "'2'", "speaks 1"]),
        ("1|0|unix|/tmp/x|grpc|", ["app protocol", "'0'"]),
        ("1|1|udp|/tmp/x|grpc|", ["network", "'udp'"]),
        ("1|1|unix|/tmp/x|netrpc|", ["'netrpc'", "grpc"]),
        ("1|1|unix|/tmp/x", ["'netrpc'", "grpc"]),  # no protocol means net/rpc
        ("1|1|unix", ["CORE|APP|NETWORK|ADDRESS|PROTOCOL"]),
        ("", ["CORE|APP|NETWORK|ADDRESS|PROTOCOL"]),
        ("hello world", ["CORE|APP|NETWORK|ADDRESS|PROTOCOL", "hello world"]),
        ("1|1|unix|/tmp/x|grpc|" + "A" * 100, ["TLS"]),
    ],
)
def test_the_host_refuses_a_line_it_cannot_speak_and_says_why(
        line: str, words: list[str]) -> None:
    with pytest.raises(HandshakeError) as info:
        parse_handshake(line)
    for word in words:
        assert word in str(info.value)


# ---- the magic cookie --------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ",
    [{}, {COOKIE_KEY: ""}, {COOKIE_KEY: "aog-provider-plugin-v2"}, {"OTHER": COOKIE_VALUE}],
)
def test_a_plugin_refuses_to_run_without_the_cookie(environ: dict[str, str]) -> None:
    with pytest.raises(HandshakeError) as info:
        check_cookie(environ)
    assert str(info.value) == NOT_A_PLUGIN
    assert str(info.value).startswith("This binary is a plugin.")


def test_the_environment_the_host_gives_passes_the_plugins_checks() -> None:
    env = plugin_env()
    check_cookie(env)  # no exception
    assert env[COOKIE_KEY] == COOKIE_VALUE == "aog-provider-plugin-v1"
    assert env[PROTOCOL_VERSIONS_ENV] == str(APP_PROTOCOL_VERSION)
