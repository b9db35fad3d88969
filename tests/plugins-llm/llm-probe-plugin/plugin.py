"""A test plugin that calls `ctx.llm` as each request asks and answers with what came
back (the result, or the exception's type, message and config key).

Service `llm-probe`, request `{"call": <method>, "args": [...], "kwargs": {...}}`:

- `complete`, `acomplete`, `complete_structured`, `acomplete_structured`, `embed`,
  `aembed`: that method with those arguments;
- `sync_in_loop`: the sync `complete` straight from this async handler (on the SDK's
  event loop);
- `socket_info`: the modes of its socket and of the socket's folder;
- `raw`: sends `kwargs["frame"]` as is over the plugin's socket (a forged `plugin_id`);
- `crash`: sends a call and exits the process while it runs.

Service `chat` (under the loop-* manifests) answers a chat by calling
`ctx.llm.acomplete` with the same messages, or, when the last message is
`sleep:<tag>`, by sleeping a minute (to be cancelled), or, when it is `hold:<tag>`, by
answering "released <tag>" once a file `release-<tag>` exists beside the events file
(a slow model whose answer the test lets go). Events go as JSON lines to the file in
ECHO_PLUGIN_EVENTS, as the echo plugin's do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from aogstream.rpc import hostcall
from aogstream.sdk import LocalPluginProvider, PluginLlmTrustError, serve

EVENTS = os.environ.get("ECHO_PLUGIN_EVENTS", "")


def record(event: str, **fields: Any) -> None:
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(json.dumps({"event": event, "t": time.monotonic(), "pid": os.getpid(),
                                **fields}) + "\n")


def outcome(exc: BaseException) -> dict[str, Any]:
    return {"ok": False, "error_type": type(exc).__name__, "message": str(exc),
            "key": getattr(exc, "key", ""), "code": getattr(exc, "code", ""),
            "is_permission_error": isinstance(exc, PermissionError),
            "is_trust_error": isinstance(exc, PluginLlmTrustError)}


class Probe(LocalPluginProvider):
    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        req = json.loads(request or b"{}")
        if service_name == "chat":
            return await self._chat(req)
        call, tag = req.get("call"), str(req.get("id", ""))
        args, kwargs = req.get("args") or [], req.get("kwargs") or {}
        record("llm_start", call=call, id=tag)
        try:
            result = await self._run(call, args, kwargs)
        except asyncio.CancelledError:
            record("llm_cancelled", call=call, id=tag)
            raise
        except Exception as exc:  # noqa: BLE001 - the test reads what it was
            record("llm_error", call=call, id=tag, error=type(exc).__name__)
            return json.dumps(outcome(exc)).encode()
        record("llm_done", call=call, id=tag)
        return json.dumps({"ok": True, "result": result}).encode()

    async def _run(self, call: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        llm = self.ctx.llm
        if call in ("complete", "complete_structured", "embed"):
            # a sync method from plain (non-loop) plugin code: a worker thread
            return dataclasses.asdict(await asyncio.to_thread(getattr(llm, call), *args,
                                                              **kwargs))
        if call in ("acomplete", "acomplete_structured", "aembed"):
            return dataclasses.asdict(await getattr(llm, call)(*args, **kwargs))
        if call == "sync_in_loop":
            started = time.monotonic()
            ticks: list[float] = []

            async def ticker() -> None:
                while True:
                    await asyncio.sleep(0.01)
                    ticks.append(time.monotonic())

            task = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            try:
                result = llm.complete(*args, **kwargs)  # on the loop's own thread
            finally:
                task.cancel()
            return {"result": dataclasses.asdict(result),
                    "seconds": time.monotonic() - started}
        if call == "socket_info":
            path = llm.socket_path
            return {"socket_mode": os.stat(path).st_mode & 0o777,
                    "folder_mode": os.stat(os.path.dirname(path)).st_mode & 0o777}
        if call == "raw":
            return await asyncio.to_thread(_raw_call, llm.socket_path, kwargs["frame"])
        if call == "crash":
            # the whole request is in the socket before the process dies: the gateway
            # reads it, starts the call and then finds the connection closed
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(llm.socket_path)
            sock.sendall(hostcall.encode({"op": "complete", "args": kwargs}))
            record("crashing")
            os._exit(3)
        raise ValueError(f"unknown call {call!r}")

    async def _chat(self, req: dict[str, Any]) -> bytes:
        name = self.manifest.provider.name if self.manifest else "loop"
        messages = req.get("messages") or [{}]
        last = messages[-1].get("content") if isinstance(messages[-1], dict) else ""
        if isinstance(last, str) and last.startswith("hold:"):
            return await self._hold(name, last.removeprefix("hold:"))
        if isinstance(last, str) and last.startswith("sleep:"):
            # a chat that takes its time, to be cancelled while the host waits on it
            tag = last.removeprefix("sleep:")
            record("chat_sleeping", plugin=name, id=tag)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                record("chat_cancelled", plugin=name, id=tag)
                raise
        try:
            result = await self.ctx.llm.acomplete(req.get("messages") or [],
                                                  purpose="loop.chat")
            text = result.text
        except Exception as exc:  # noqa: BLE001 - the chain's end reports why
            text = f"{type(exc).__name__}: {exc}"
        return json.dumps({"model": name, "message": {"role": "assistant", "content": text},
                           "finished": True}).encode()


    async def _hold(self, name: str, tag: str) -> bytes:
        """A chat that answers when the test says so (or after a minute, saying so)."""
        record("chat_holding", plugin=name, id=tag)
        release = Path(EVENTS).with_name(f"release-{tag}")
        text = f"never released {tag}"
        try:
            for _ in range(3000):  # a minute at most
                if release.exists():
                    text = f"released {tag}"
                    break
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            record("chat_cancelled", plugin=name, id=tag)
            raise
        record("chat_released", plugin=name, id=tag)
        return json.dumps({"model": name, "message": {"role": "assistant", "content": text},
                           "finished": True}).encode()


def _raw_call(path: str, frame: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(120)
        sock.connect(path)
        sock.sendall(hostcall.encode(frame))
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return hostcall.decode(data[hostcall.HEADER.size:])


if __name__ == "__main__":
    serve(Probe())
