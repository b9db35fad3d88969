"""The benchmark's stub plugin, written with aogstream.sdk: its streaming `chat` service
emits the same AOG chat chunks, with the same timing, as the direct stub server in
benchmarks/stub_sse.py, so the two runs differ only by the relay.

Request fields (all optional): `id` (copied into each chunk), `chunks` (N content
chunks, default 5), `first_delay` (T0, seconds), `gap` (Δ, seconds; 0 = instant mode).
The stream is: sleep T0, then N chunks with content "tok" each followed by a sleep of Δ,
then a final chunk with `finished: true`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aogstream.sdk import LocalPluginProvider, PluginError, StreamablePlugin, serve

MAX_CHUNKS = 1_000_000


def params(request: bytes) -> tuple[str, int, float, float]:
    req = json.loads(request or b"{}")
    n = int(req.get("chunks", 5))
    if not 0 <= n <= MAX_CHUNKS:
        raise PluginError(3, f"chunks must be in 0..{MAX_CHUNKS}")
    return (str(req.get("id", "")), n, float(req.get("first_delay", 0)),
            float(req.get("gap", 0)))


class Stub(LocalPluginProvider, StreamablePlugin):
    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        tag, n, first_delay, _gap = params(request)
        await asyncio.sleep(first_delay)
        return json.dumps({"id": tag, "model": "stub", "created_at": _now(),
                           "message": {"role": "assistant", "content": "tok" * n},
                           "finished": True}, separators=(",", ":")).encode()

    async def invoke_service_stream(
        self, service_name: str, auth_info: str, request: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        tag, n, first_delay, gap = params(request)
        created = _now()
        if first_delay:
            await asyncio.sleep(first_delay)
        for _ in range(n):
            # A fresh dict per chunk, as an engine would build; the SDK serialises it
            # with json.dumps(separators=(",", ":")), exactly like the direct stub.
            yield {"id": tag, "model": "stub", "created_at": created,
                   "message": {"role": "assistant", "content": "tok"}, "finished": False}
            if gap:
                await asyncio.sleep(gap)
        yield {"id": tag, "model": "stub", "created_at": created,
               "message": {"role": "assistant", "content": ""}, "finished": True}

    async def health_check(self) -> None:
        return None

    async def check_engine(self) -> bool:
        return True


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


if __name__ == "__main__":
    serve(Stub())
