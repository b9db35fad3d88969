"""A stand-in cloud provider for the routing tests (a `remote` plugin, no network).

Every answer says which plugin served it (`served_by`) and which credentials arrived
with the call, as a fingerprint (`auth.sha256` of the exact `auth_info` string and its
field names), never the secret itself: tests prove the key reached this plugin while
still checking that the key text shows up in no response and no log. Calls whose
`auth_info` has no `api_key` are refused with UNAUTHENTICATED (14), as a cloud API
without a key would be.

Knobs in the request body (ignored by the local echo-plugin, so a test can make one
side fail): `remote_fail_code` fails the call before any byte, `remote_sleep` waits,
`remote_error_after` fails a stream after N chunks. Calls are recorded as JSON lines in
ECHO_PLUGIN_EVENTS (the echo-plugin's file) with `plugin: remote-echo-plugin`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from aogstream.sdk import PluginError, RemotePluginProvider, StreamablePlugin, serve
from aogstream.sdk.provider import parse_auth_info

NAME = "remote-echo-plugin"
EVENTS = os.environ.get("ECHO_PLUGIN_EVENTS", "")
UNAUTHENTICATED = 14


def record(event: str, **fields: Any) -> None:
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(json.dumps({"event": event, "plugin": NAME, "t": time.monotonic(),
                                "pid": os.getpid(), **fields}) + "\n")


def fingerprint(auth_info: str) -> dict[str, Any]:
    """What the tests compare: a hash of the credentials and their field names."""
    fields = sorted(parse_auth_info(auth_info)) if auth_info else []
    return {"sha256": hashlib.sha256(auth_info.encode()).hexdigest() if auth_info else "",
            "fields": fields}


def require_key(auth_info: str) -> None:
    if "api_key" not in (parse_auth_info(auth_info) if auth_info else {}):
        raise PluginError(UNAUTHENTICATED,
                          "no api_key in the credentials; set the provider's auth_key "
                          "(e.g. PUT /aog/v0.2/service_provider with auth_key "
                          '\'{"api_key": "..."}\')')


def chunk(tag: str, content: str, auth: dict[str, Any], finished: bool = False
          ) -> dict[str, Any]:
    out: dict[str, Any] = {"id": tag, "model": "cloud-chat-1", "created_at": time.time(),
                           "message": {"role": "assistant", "content": content},
                           "finished": finished, "served_by": NAME, "auth": auth}
    if finished:
        out["finish_reason"] = "stop"
    return out


class RemoteEcho(RemotePluginProvider, StreamablePlugin):
    def __init__(self) -> None:
        self.credentials: dict[str, str] = {}

    async def _begin(self, kind: str, service_name: str, auth_info: str,
                     req: dict[str, Any]) -> dict[str, Any]:
        auth = fingerprint(auth_info)
        record(kind, service=service_name, id=str(req.get("id", "")), auth=auth)
        await asyncio.sleep(float(req.get("remote_sleep", 0)))
        if req.get("remote_fail_code"):
            raise PluginError(int(req["remote_fail_code"]), "asked to fail")
        require_key(auth_info)
        return auth

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        req = json.loads(request or b"{}")
        auth = await self._begin("unary", service_name, auth_info, req)
        tag = str(req.get("id", ""))
        if service_name == "chat":
            return json.dumps(chunk(tag, "cloud says hi", auth, True)).encode()
        if service_name == "text-to-image":
            return json.dumps({"id": tag, "service": service_name, "served_by": NAME,
                               "auth": auth, "data": [{"url": "https://example.invalid/1.png"}]
                               }).encode()
        return json.dumps({"id": tag, "service": service_name, "served_by": NAME,
                           "auth": auth, "model": req.get("model", "cloud-embed-1"),
                           "data": [{"index": 0, "embedding": [0.1, 0.2, 0.3]}]}).encode()

    async def invoke_service_stream(
        self, service_name: str, auth_info: str, request: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        req = json.loads(request or b"{}")
        auth = await self._begin("stream-start", service_name, auth_info, req)
        tag = str(req.get("id", ""))
        for i in range(int(req.get("tokens", 3))):
            if req.get("remote_error_after") is not None and i == int(req["remote_error_after"]):
                raise PluginError(11, "asked to fail mid-stream")
            yield chunk(tag, f"cloud{i} ", auth)
        yield chunk(tag, "", auth, True)

    async def set_auth(self, auth_type: str, credentials: dict[str, str]) -> None:
        self.credentials = dict(credentials)
        record("set-auth", auth_type=auth_type, fields=sorted(credentials))

    async def validate_auth(self) -> None:
        record("validate-auth", fields=sorted(self.credentials))
        if "api_key" not in self.credentials:
            raise PluginError(UNAUTHENTICATED, "no api_key in the credentials")

    async def health_check(self) -> None:
        return None


if __name__ == "__main__":
    serve(RemoteEcho())
