"""The skeleton of an engine process: a small JSON-over-HTTP server on loopback.

Engine processes run in the engine's own virtualenv, which holds the engine's
packages and nothing of the gateway's, so this module uses the standard library
only. A plugin's worker script loads its model, then calls `serve()` with its
routes; the plugin talks to it over keep-alive HTTP on 127.0.0.1.

A route gets the parsed JSON body and returns:
- a dict: sent as one JSON response;
- bytes: sent as `application/octet-stream`;
- an iterator of dicts: sent as NDJSON with chunked transfer, one flushed line per
  item, so the plugin can relay each piece (a sentence of audio, a segment) as soon
  as it exists. When the plugin hangs up, the next write fails and the iterator is
  closed, so the engine stops working for a caller that left.
Inference is serialised with one lock: the engines here use every core for one job,
and two at once would only make both slower.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[dict[str, Any]], Any]
LOCK = threading.Lock()


class ClientError(Exception):
    """A request the engine cannot serve as asked (answered with HTTP 400)."""


def base_args(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True, help="path of the model file or folder")
    p.add_argument("--name", default="", help="the model's name, for /health")
    p.add_argument("--threads", type=int, default=0)
    return p


def serve(routes: dict[str, Route], *, port: int, info: dict[str, Any]) -> None:
    """Serve `routes` on 127.0.0.1:`port` until killed."""
    started = time.time()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Buffered writes + TCP_NODELAY: headers and body leave in one segment, and no
        # small write waits for a delayed ACK (which costs ~40 ms per response).
        wbufsize = 1 << 16

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            return  # the plugin logs requests; keep the engine quiet

        def do_GET(self) -> None:
            if self.path == "/health":
                self._json(200, {"status": "ok", "uptime": time.time() - started, **info})
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            route = routes.get(self.path)
            if route is None:
                self._json(404, {"error": f"no route {self.path}"})
                return
            try:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with LOCK:
                    result = route(body)
                    if isinstance(result, Iterator):
                        self._stream(result)
                        return
            except ClientError as exc:
                self._json(400, {"error": str(exc)})
                return
            except Exception as exc:  # noqa: BLE001 - report it to the plugin, keep serving
                traceback.print_exc()
                self._json(500, {"error": f"{type(exc).__name__}: {exc}"})
                return
            if isinstance(result, bytes):
                self._send(200, "application/octet-stream", result)
            else:
                self._json(200, result)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, "application/json", json.dumps(obj).encode())

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def _stream(self, items: Iterator[dict[str, Any]]) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/x-ndjson")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            try:
                for item in items:
                    line = json.dumps(item).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the caller left: stop producing
            except Exception as exc:  # noqa: BLE001 - tell the caller mid-stream
                traceback.print_exc()
                line = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n"
                try:
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(line), line))
                except OSError:
                    self.close_connection = True
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"engine worker ready on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
