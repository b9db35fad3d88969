"""A test plugin written the blocking way: plain `def` handlers and sync `ctx.llm`.

Service `sync-probe`, request `{"id": tag, ...}`:

- `{"call": "ping"}`: answers at once with the name of the thread that served it;
- `{"call": "complete", "messages": [...]}`: a sync `ctx.llm.complete` with those
  messages (held by a slow model in the tests), answered with the reply;
- streamed (`"stream": true`): a plain generator that yields `count` events, each
  made after a short blocking sleep.

Events go as JSON lines to the file in ECHO_PLUGIN_EVENTS, as the echo plugin's do.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from aogstream.sdk import PluginLlmError, RemotePluginProvider, StreamablePlugin, serve

EVENTS = os.environ.get("ECHO_PLUGIN_EVENTS", "")


def record(event: str, **fields: Any) -> None:
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(json.dumps({"event": event, "t": time.monotonic(), "pid": os.getpid(),
                                **fields}) + "\n")


def where() -> dict[str, Any]:
    thread = threading.current_thread()
    return {"thread": thread.name, "main_thread": thread is threading.main_thread()}


class SyncProbe(RemotePluginProvider, StreamablePlugin):
    def invoke_service(self, service_name: str, auth_info: str,  # type: ignore[override]
                       request: bytes) -> bytes:
        req = json.loads(request or b"{}")
        tag = str(req.get("id", ""))
        if req.get("call") == "ping":
            record("sync_ping", id=tag, **where())
            return json.dumps({"pong": tag, **where()}).encode()
        record("sync_llm_start", id=tag, **where())
        try:
            result = self.ctx.llm.complete(req["messages"], purpose=tag, max_tokens=8)
        except PluginLlmError as exc:
            record("sync_llm_error", id=tag, code=exc.code, message=str(exc))
            raise
        record("sync_llm_done", id=tag)
        return json.dumps({"text": result.text, "provider": result.provider,
                           **where()}).encode()

    def invoke_service_stream(self, service_name: str, auth_info: str,  # type: ignore[override]
                              request: bytes) -> Iterator[dict[str, Any]]:
        req = json.loads(request or b"{}")
        tag = str(req.get("id", ""))
        try:
            for i in range(int(req.get("count", 3))):
                time.sleep(0.01)  # blocking work between events
                yield {"i": i, "id": tag, **where()}
        finally:
            record("sync_stream_closed", id=tag)


if __name__ == "__main__":
    serve(SyncProbe())
