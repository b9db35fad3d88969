"""The client of a running gateway: its address (`AOG_HOST`), the management key to send,
and `Api`, a sync HTTP client that turns transport and API failures into `CliError`s.

Every `aogstream` command that talks to a gateway goes through here: it never opens the
database or a plugin itself, so what the CLI shows is exactly what any other client of the
gateway would see. Imports stay light (httpx only) so a command answers quickly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from aogstream import SPEC_VERSION

DEFAULT_HOST = "http://127.0.0.1:16688"
DEFAULT_PORT = 16688
BASE = f"/aog/{SPEC_VERSION}"
MANAGE_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
# streams (pull, chat, local install) end when the gateway says so: it owns the deadlines
STREAM_TIMEOUT = httpx.Timeout(None, connect=5.0)
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure to show as one clear line on stderr, with the exit code to return."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def server_url(raw: str | None = None) -> str:
    """`AOG_HOST` as a base URL: a full URL, `host:port` or a bare host all work."""
    value = (raw if raw is not None else os.environ.get("AOG_HOST", "")).strip() or DEFAULT_HOST
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if not parts.hostname:
        raise CliError(f"AOG_HOST={value!r} is not an address; use host:port or "
                       f"http://host:port (default {DEFAULT_HOST})", 2)
    netloc = parts.netloc if parts.port else f"{parts.netloc}:{DEFAULT_PORT}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


def management_key(url: str) -> str:
    """The key to send: `AOGSTREAM_MANAGEMENT_KEY`, else, for a gateway on this machine
    (a loopback address), the key file in the data directory (`AOG_DATA_DIR` or the
    default), so the user never types it. Never read for a remote gateway: its key is
    not ours to send elsewhere."""
    from aogstream import config

    key = os.environ.get(config.MANAGEMENT_KEY_ENV, "").strip()
    if key:
        return key
    host = urlsplit(url).hostname or ""
    if config.is_loopback_host(host):
        return config.read_management_key(config.default_data_dir())
    return ""


def not_running(url: str) -> CliError:
    return CliError(f"aogstream is not running at {url}; start it with "
                    f"`aogstream server start -d`")


def error_message(resp: httpx.Response) -> str:
    """The gateway's own words for an error response (its envelope's message)."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or f"HTTP {resp.status_code}"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return json.dumps(body)


class Api:
    """A sync HTTP client for one gateway that turns transport and API failures into
    CliErrors (a refused connection means the server is not running)."""

    def __init__(self, url: str) -> None:
        self.url = url
        key = management_key(url)
        # the management key opens the service routes too (when they need API keys)
        self.headers = {"X-Management-Key": key} if key else {}
        self.http = httpx.Client(base_url=url, timeout=MANAGE_TIMEOUT, trust_env=False,
                                 headers=self.headers)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: Any = None, timeout: httpx.Timeout = MANAGE_TIMEOUT) -> Any:
        """One management call; returns the envelope's `data` (or the whole body)."""
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        try:
            resp = self.http.request(method, BASE + path, params=query or None,
                                     json=body, timeout=timeout)
        except httpx.ConnectError as exc:
            raise not_running(self.url) from exc
        except httpx.TimeoutException as exc:
            raise CliError(f"{method} {path} got no answer from {self.url} in time") from exc
        if resp.status_code >= 400:
            raise CliError(f"error: {error_message(resp)}")
        try:
            payload = resp.json()
        except ValueError:
            return resp.text
        if isinstance(payload, dict) and "business_code" in payload:
            return payload.get("data")
        return payload

    @contextlib.contextmanager
    def stream(self, path: str, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        """POST and yield the open response (errors before the first byte raised)."""
        try:
            with self.http.stream("POST", path, json=body, headers=headers,
                                  timeout=STREAM_TIMEOUT) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise CliError(f"error: {error_message(resp)}")
                yield resp
        except httpx.ConnectError as exc:
            raise not_running(self.url) from exc

    def health(self) -> bool:
        try:
            return self.http.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False


def sse_events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    """JSON events of an SSE (`data: {...}`) or NDJSON body, as they arrive."""
    for line in resp.iter_lines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("data:"):
            line = line[5:].strip()
        elif not line.startswith("{"):
            continue  # SSE comments, event names
        if line == "[DONE]":
            return
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            yield ev
