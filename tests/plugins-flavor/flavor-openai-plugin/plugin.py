"""A test plugin whose `config_ref` is `openai:chat`, not `aog:chat`: it receives OpenAI's
request body and answers in OpenAI's shapes (a `chat.completion`, or the server's SSE
`chat.completion.chunk` payloads and `[DONE]`), exactly as an AOG plugin written for
that flavor does. The gateway must convert both ways.

It forwards the body it receives, untouched, to the OpenAI-compatible server named by
the provider's credentials (`auth_info` = `{"api_key", "base_url"}`), so the answer is
real, and records what it saw (the request's field names, never the key) as JSON lines
in the file named by ECHO_PLUGIN_EVENTS, like the echo test plugin.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from aogstream.sdk import PluginError, RemotePluginProvider, StreamablePlugin, serve
from aogstream.sdk.provider import parse_auth_info

EVENTS = os.environ.get("ECHO_PLUGIN_EVENTS", "")
UNAUTHENTICATED, UNAVAILABLE, INVALID = 14, 12, 3
TIMEOUT = httpx.Timeout(120.0, connect=5.0)


def record(event: str, **fields: Any) -> None:
    """One JSON line for the test to read (the events file is shared with the test)."""
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")


def target(auth_info: str) -> tuple[str, dict[str, str]]:
    """The server's chat URL and headers from the call's credentials."""
    creds = parse_auth_info(auth_info)
    if not creds.get("api_key") or not creds.get("base_url"):
        raise PluginError(UNAUTHENTICATED, "set api_key and base_url with PUT "
                          "/aog/v0.2/service_provider")
    return (creds["base_url"].rstrip("/") + "/chat/completions",
            {"Authorization": f"Bearer {creds['api_key']}"})


def seen(mode: str, request: bytes, auth_info: str) -> dict[str, Any]:
    """The OpenAI body as received; its field names go to the events file."""
    body = json.loads(request)
    record("invoke", mode=mode, keys=sorted(body), model=body.get("model"),
           stream=body.get("stream"), auth="set" if auth_info else "empty")
    return body


def refused(status: int, text: str) -> PluginError:
    """The server's error as a plugin error the gateway maps to the same status class."""
    code = UNAUTHENTICATED if status in (401, 403) else INVALID if status < 500 else UNAVAILABLE
    return PluginError(code, f"the server answered HTTP {status}: {text[:300]}")


class FlavorOpenAI(RemotePluginProvider, StreamablePlugin):
    """Forwards OpenAI chat bodies; the gateway does all the flavor conversion."""

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        body = seen("unary", request, auth_info)
        url, headers = target(auth_info)
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            r = await http.post(url, json=body, headers=headers)
        if r.status_code != 200:
            raise refused(r.status_code, r.text)
        return r.content  # OpenAI's chat.completion, as the server wrote it

    async def invoke_service_stream(self, service_name: str, auth_info: str,
                                    request: bytes) -> AsyncIterator[bytes]:
        body = seen("stream", request, auth_info)
        url, headers = target(auth_info)
        async with httpx.AsyncClient(timeout=TIMEOUT) as http, \
                http.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                raise refused(r.status_code, (await r.aread()).decode(errors="replace"))
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    yield line[5:].strip().encode()  # chunks and the final [DONE]

    async def health_check(self) -> None:
        return None


if __name__ == "__main__":
    serve(FlavorOpenAI())
