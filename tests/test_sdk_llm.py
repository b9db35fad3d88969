"""The SDK's `ctx.llm` client on its own: argument checks, answers, errors.

A unit test of `aogstream.sdk.llm` without a gateway: arguments are checked before
anything is sent (the seed's `ValueError`s), answer frames become the result
dataclasses, error frames become `PluginLlmTrustError` (a `PermissionError` carrying
the key), `ValueError` or `PluginLlmError`, and a plugin started without a host
socket is told why. Calls through a real gateway are in tests/test_plugin_llm.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from aogstream.rpc import hostcall as hc
from aogstream.sdk import (
    PluginLlm,
    PluginLlmError,
    PluginLlmImageInput,
    PluginLlmTrustError,
    PluginProvider,
    blocking,
)
from aogstream.sdk.llm import _input_block


def test_ctx_llm_is_one_client_per_plugin():
    plugin = PluginProvider()
    assert plugin.ctx.llm is plugin.ctx.llm


def test_without_a_host_socket_the_call_says_why(monkeypatch):
    monkeypatch.delenv("AOGSTREAM_HOST_SOCKET", raising=False)
    with pytest.raises(PluginLlmError) as info:
        PluginLlm().complete([{"role": "user", "content": "hi"}])
    assert "AOGSTREAM_HOST_SOCKET" in str(info.value) and info.value.code == "no_route"


@pytest.mark.parametrize(("call", "says"), [
    (lambda llm: llm.complete([]), "non-empty list"),
    (lambda llm: llm.complete("hi"), "non-empty list"),
    (lambda llm: llm.complete_structured(instructions=" ", input=[{"type": "text",
                                                                   "text": "x"}]),
     "complete_structured requires non-empty instructions"),
    (lambda llm: llm.complete_structured(instructions="x", input=[]),
     "requires at least one input block"),
    (lambda llm: llm.complete_structured(instructions="x", input=[{"type": "audio"}]),
     "Unknown input block type"),
    (lambda llm: llm.complete_structured(instructions="x",
                                         input=[PluginLlmImageInput(data="str")]),  # type: ignore[arg-type]
     "image input 'data' must be bytes"),
    (lambda llm: llm.embed([]), "non-empty list of strings"),
])
def test_bad_arguments_are_value_errors_before_anything_is_sent(call, says):
    with pytest.raises(ValueError) as info:
        call(PluginLlm("/nonexistent/socket"))
    assert says in str(info.value)


def test_image_bytes_travel_as_base64():
    block = _input_block(PluginLlmImageInput(data=b"\x89PNG", mime_type="image/png"), 0)
    assert block == {"type": "image", "mime_type": "image/png", "data": "iVBORw=="}


def test_answer_frames_become_results_and_exceptions():
    result = PluginLlm._structured_result(PluginLlm._answer({"ok": True, "result": {
        "text": '{"a": 1}', "provider": "p", "model": "m", "agent_id": "default",
        "usage": {"input_tokens": 2, "output_tokens": 3, "total_tokens": 5},
        "audit": {"plugin_id": "me"}, "parsed": {"a": 1}, "content_type": "json"}}))
    assert (result.parsed, result.content_type, result.usage.total_tokens) == ({"a": 1},
                                                                               "json", 5)
    assert result.usage.cost_usd is None and result.audit == {"plugin_id": "me"}
    with pytest.raises(PluginLlmTrustError) as trust:
        PluginLlm._answer({"ok": False, "error": {"code": "trust_denied", "message": "no",
                                                  "key": "plugins.entries.me.llm.x"}})
    assert isinstance(trust.value, PermissionError)
    assert trust.value.key == "plugins.entries.me.llm.x"
    with pytest.raises(ValueError):
        PluginLlm._answer({"ok": False, "error": {"code": "too_large", "message": "big"}})
    with pytest.raises(PluginLlmError) as other:
        PluginLlm._answer({"ok": False, "error": {"code": "recursion", "message": "loop"}})
    assert other.value.code == "recursion"


def test_a_cancelled_request_cuts_its_sync_call_and_the_gateway_sees_the_close(tmp_path):
    path = str(tmp_path / "host.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(10)
    got_request, saw_close = threading.Event(), threading.Event()

    def gateway_that_never_answers() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(30)
            n = hc.frame_length(conn.recv(hc.HEADER.size, socket.MSG_WAITALL),
                                hc.MAX_REQUEST_BYTES)
            conn.recv(n, socket.MSG_WAITALL)
            got_request.set()
            if conn.recv(1) == b"":  # the plugin's side closed: the gateway would cancel
                saw_close.set()

    server = threading.Thread(target=gateway_that_never_answers, daemon=True)
    server.start()
    llm = PluginLlm(path)
    errors: list[PluginLlmError] = []

    def handler() -> None:  # a plain-def handler, on a worker thread
        try:
            llm.complete([{"role": "user", "content": "hi"}], timeout=300)
        except PluginLlmError as exc:
            errors.append(exc)

    async def main() -> None:
        async def request() -> None:
            with blocking.request_scope():
                await blocking.call_plugin(handler)

        task = asyncio.ensure_future(request())
        assert await asyncio.to_thread(got_request.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
        assert saw_close.wait(10)
        server.join(10)
        for _ in range(1000):  # the worker records its error right after the cut
            if errors:
                break
            threading.Event().wait(0.01)
        assert [e.code for e in errors] == ["cancelled"], errors
    finally:
        listener.close()
