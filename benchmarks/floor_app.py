"""The benchmarks' floor: a bare ASGI app on hypercorn's trio worker that answers like the
stub engine (the same JSON body, the same SSE chunks and NDJSON lines, the same timing).

    python benchmarks/floor_app.py --port 0      # prints PORT <n> once it listens

What a request costs on the required stack (hypercorn 0.18 + trio, HTTP/1.1 keep-alive)
before any gateway logic: no routing beyond one path test, no store, no plugin, no
upstream call. aogstream is judged per request against this floor (per chunk, against
`direct`, the stub itself). It is configured like the gateway's serving process (backlog
2048, no access log, no read timeout, the same collector thresholds), and a streamed
answer runs the `receive()` watcher and shields its final send, as any correct trio ASGI
streamer must (a gateway cannot do without them, so neither does the floor). Timing
(T₀, N, Δ) comes from the model name, body, query and headers exactly as in the stub
(`stub_engine.timing_for`).

It has a WebSocket side too, for benchmarks/realtime.py: on AOG's realtime path
(`/aog/v0.2/services/speech-to-text-ws`) it behaves exactly like
realtime_plugin/direct_ws.py (the realtime direct baseline) through ASGI instead of raw
wsproto: accept, on `run-task` the gateway's `task-started` bytes, on each binary frame a
`result-generated` partial naming the frame's sequence number, on `finish-task`
`task-finished` (the last two built by the realtime plugin's own `events.py`, imported
through direct_ws so all three systems send byte-identical frames). `first_delay` holds
the first answer as direct_ws does (a deadline on `receive()`, no extra task); the
benchmark's timed rounds do not use it. So the realtime floor is what hypercorn's trio
worker and its ASGI WebSocket handling cost per frame before any gateway logic: one
`receive()` and one `websocket.send` (one socket write) per frame, nothing else. It
lives in this module, not a sibling, so that the HTTP and WebSocket floors are one
process with one hypercorn configuration and one collector policy by construction, and
the harness starts it the same way (`start_floor`) for either benchmark.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "realtime_plugin"))
from direct_ws import EVENTS, task_started
from stub_engine import MAX_BODY, BadRequest, StubEngine, Timing, _dumps, _iso, timing_for

DEFAULT = Timing(0.0, 5, 0.0)
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache")]
NDJSON_HEADERS = [(b"content-type", b"application/x-ndjson")]
REALTIME_PATH = "/aog/v0.2/services/speech-to-text-ws"  # harness.realtime.REALTIME_PATH


async def _body(receive: Any) -> bytes | None:
    """The request body (None: the client left before sending it all)."""
    parts: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(413, "the body is too large")
        parts.append(chunk)
        if not msg.get("more_body"):
            return b"".join(parts)


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        *JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _sse_events(model: str, tm: Timing) -> tuple[list[bytes], bytes]:
    """The stub's SSE content events and its final chunk + [DONE], byte for byte."""
    created = int(time.time())
    events = []
    for i in range(tm.chunks):
        delta = {"role": "assistant", "content": "tok"} if i == 0 else {"content": "tok"}
        events.append(b"data: " + _dumps({
            "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": None}]}) + b"\n\n")
    final = b"data: " + _dumps({
        "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created,
        "model": model, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": tm.chunks,
                  "total_tokens": tm.chunks + 1}}) + b"\n\n" + b"data: [DONE]\n\n"
    return events, final


def _ndjson_lines(model: str, tm: Timing) -> tuple[list[bytes], bytes]:
    created = _iso()
    lines = [_dumps({"model": model, "created_at": created, "message": {
        "role": "assistant", "content": "tok"}, "done": False}) + b"\n"
        for _ in range(tm.chunks)]
    final = _dumps({"model": model, "created_at": created, "message": {
        "role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
        "eval_count": tm.chunks}) + b"\n"
    return lines, final


async def _stream(receive: Any, send: Any, headers: list[tuple[bytes, bytes]],
                  tm: Timing, parts: list[bytes], final: bytes) -> None:
    """One send per chunk (as the stub and a relay do), a watcher that cancels on
    disconnect, and the final send shielded (else hypercorn-trio leaves the connection
    open)."""
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        if tm.t0:
            await trio.sleep(tm.t0)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for part in parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
            if tm.gap:
                await trio.sleep(tm.gap)
        with trio.CancelScope(shield=True):
            await send({"type": "http.response.body", "body": final})
        nursery.cancel_scope.cancel()


async def _realtime(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """AOG's realtime socket as direct_ws.py answers it, through ASGI: one `receive()`
    and at most one `websocket.send` per client message, in the connection's own task
    (hypercorn's); another path is refused (403) before the handshake completes."""
    if (await receive())["type"] != "websocket.connect":
        return
    if scope["path"] != REALTIME_PATH:
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    task_id = str(uuid.uuid4())
    result = EVENTS.result_event
    seq = 0
    first_delay = 0.0
    held = 0  # frames waiting for first_delay to pass
    due: float | None = None  # when the held frames are answered
    while True:
        if due is None:
            msg = await receive()
        else:
            msg = None
            with trio.move_on_at(due):
                msg = await receive()
            if msg is None:  # the delay passed: the held answers, in one send each
                for _ in range(held):
                    await send({"type": "websocket.send",
                                "text": result(task_id, seq).decode()})
                    seq += 1
                held, due, first_delay = 0, None, 0.0
                continue
        kind = msg["type"]
        if kind == "websocket.disconnect":
            return
        if kind != "websocket.receive":
            continue
        if msg.get("bytes") is not None:
            if held or (seq == 0 and first_delay):
                held += 1
                if due is None:
                    due = trio.current_time() + first_delay
                continue
            await send({"type": "websocket.send", "text": result(task_id, seq).decode()})
            seq += 1
            continue
        try:
            ctl = json.loads(msg.get("text") or "{}")
        except ValueError:
            continue  # direct_ws has no answer for it either
        action = ctl.get("action") if isinstance(ctl, dict) else None
        if action == "run-task":
            params = ctl.get("parameters") or {}
            first_delay = float(params.get("first_delay") or 0)
            seq = 0
            await send({"type": "websocket.send", "text": task_started(task_id)})
        elif action == "finish-task":
            await send({"type": "websocket.send",
                        "text": EVENTS.finished_event(task_id).decode()})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The whole app: chat on the stub's two paths, /health, the realtime socket, 404
    for the rest."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await _realtime(scope, receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/health":
        await _answer(send, 200, b'{"status":"ok"}')
        return
    flavor = ("openai" if path == "/v1/chat/completions" else
              "ollama" if path == "/api/chat" else "")
    if not flavor or scope["method"] != "POST":
        await _answer(send, 404, b'{"error":"not found"}')
        return
    try:
        raw = await _body(receive)
        if raw is None:
            return
        req = json.loads(raw or b"{}")
        if not isinstance(req, dict):
            raise BadRequest(400, "the body must be a JSON object")
        model = req.get("model") if isinstance(req.get("model"), str) else "stub"
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        tm = timing_for(DEFAULT, model, req, query, dict(scope["headers"]))
    except (BadRequest, ValueError) as exc:
        status = exc.status if isinstance(exc, BadRequest) else 400
        await _answer(send, status, _dumps({"error": {"message": str(exc)}}))
        return
    stream = req.get("stream") is not False if flavor == "ollama" else \
        req.get("stream") is True
    if not stream:
        if tm.t0:
            await trio.sleep(tm.t0)
        await _answer(send, 200, StubEngine._whole(flavor, model, tm.chunks))
    elif flavor == "openai":
        await _stream(receive, send, SSE_HEADERS, tm, *_sse_events(model, tm))
    else:
        await _stream(receive, send, NDJSON_HEADERS, tm, *_ndjson_lines(model, tm))


async def main(port: int) -> None:
    import hypercorn.config
    from hypercorn.trio import serve

    hc = hypercorn.config.Config()
    hc.bind = [f"127.0.0.1:{port}"]
    hc.backlog = 2048
    hc.accesslog = None
    hc.read_timeout = None
    hc.graceful_timeout = 1.0
    if port == 0:  # hypercorn reports no bound port; bind one ourselves and hand it over
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        hc.bind = [f"127.0.0.1:{port}"]
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, app, hc)  # type: ignore[arg-type]
        # the gateway's collector policy (serving/process_setup.tune_gc), so both pay alike
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 1000)
        print(f"PORT {port}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    a = ap.parse_args()
    try:
        trio.run(main, a.port)
    except KeyboardInterrupt:
        sys.exit(0)
