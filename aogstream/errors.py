"""Errors every layer can raise and every north adapter knows how to show.

AOG clients parse `{"business_code": N, "message": "..."}` with an HTTP status, so a
GatewayError carries both numbers from AOG's business-code families (10000 service,
40000 task, 100000 plugin) and a message that says what went wrong and what to do.
"""

from __future__ import annotations

import json
import re

import attrs


@attrs.frozen
class Bcode:
    """An HTTP status and an AOG business code: the class of an error."""

    status: int
    code: int


SERVICE_NOT_FOUND = Bcode(404, 10011)
BAD_REQUEST = Bcode(400, 10001)
NO_TARGET_PROVIDER = Bcode(404, 40001)
READ_BODY = Bcode(400, 40002)
BODY_TOO_LARGE = Bcode(413, 40002)
BODY_TIMEOUT = Bcode(408, 40002)
BAD_JSON = Bcode(400, 40003)
UNSUPPORTED_MEDIA = Bcode(415, 40004)
METHOD_NOT_ALLOWED = Bcode(405, 40005)
WS_MESSAGE_FORMAT = Bcode(400, 40042)
INVOKE_FAILED = Bcode(502, 40017)
TASK_FAILED = Bcode(500, 40071)
PLUGIN_NOT_FOUND = Bcode(404, 100001)
PLUGIN_NOT_RUNNING = Bcode(503, 100003)
PLUGIN_TIMEOUT = Bcode(504, 100005)
PLUGIN_UNAVAILABLE = Bcode(503, 100006)
PLUGIN_AUTH_FAILED = Bcode(401, 100102)
ENGINE_NOT_INSTALLED = Bcode(412, 100201)
ENGINE_NOT_RUNNING = Bcode(503, 100205)
MODEL_NOT_FOUND = Bcode(404, 100301)
PLUGIN_SERVICE_ERROR = Bcode(502, 100401)
PLUGIN_NOT_IMPLEMENTED = Bcode(501, 100402)
PLUGIN_BAD_REQUEST = Bcode(400, 100403)
PLUGIN_INTERNAL = Bcode(500, 100404)


# An absolute path not preceded by a word character (so `a/b` in an expression, or a
# URL path after a host name, is left alone): its folders are dropped, its name kept.
_ABSOLUTE_DIRS = re.compile(r"(?<![\w.$~:/])(?:/[\w.+@-]+)+/(?=[\w.+@-])")


def without_paths(text: str) -> str:
    """`text` with the folders of absolute paths removed (`/srv/x/openai.yaml` becomes
    `openai.yaml`): answers may name a file but never show where it lives."""
    return _ABSOLUTE_DIRS.sub("", text)


class GatewayError(Exception):
    """An error with an HTTP status, an AOG business code and a helpful message."""

    def __init__(self, bcode: Bcode, message: str) -> None:
        super().__init__(message)
        self.bcode = bcode
        self.message = message

    @property
    def status(self) -> int:
        return self.bcode.status

    def to_dict(self) -> dict[str, object]:
        return {"business_code": self.bcode.code, "message": self.message}

    def body(self) -> bytes:
        # backslashreplace: a message quoting a client's lone surrogate still encodes
        return json.dumps(self.to_dict(), ensure_ascii=False).encode("utf-8", "backslashreplace")


def from_plugin_code(code: int, message: str, plugin: str) -> GatewayError:
    """Map a plugin's result code (AOG SDK codes or the HTTP-like set) to an error.

    Plugins built on AOG's Go SDK answer with 1..14 / 1000..4006, older ones with
    HTTP-like 400..503; both arrive here.
    """
    bc = _PLUGIN_CODES.get(code)
    if bc is None:
        if 2000 <= code < 3000:
            bc = ENGINE_NOT_RUNNING
        elif 3000 <= code < 4000:
            bc = MODEL_NOT_FOUND if code == 3000 else PLUGIN_SERVICE_ERROR
        else:
            bc = PLUGIN_SERVICE_ERROR
    text = message or "the plugin reported an error without a message"
    return GatewayError(bc, f"{plugin}: {text} (plugin code {code})")


_PLUGIN_CODES: dict[int, Bcode] = {
    2: PLUGIN_BAD_REQUEST, 400: PLUGIN_BAD_REQUEST, 4003: PLUGIN_BAD_REQUEST,
    3: MODEL_NOT_FOUND, 404: MODEL_NOT_FOUND, 4000: SERVICE_NOT_FOUND,
    5: PLUGIN_AUTH_FAILED, 14: PLUGIN_AUTH_FAILED, 401: PLUGIN_AUTH_FAILED,
    7: ENGINE_NOT_INSTALLED, 412: ENGINE_NOT_INSTALLED, 2001: ENGINE_NOT_INSTALLED,
    10: PLUGIN_NOT_IMPLEMENTED, 501: PLUGIN_NOT_IMPLEMENTED,
    4005: PLUGIN_NOT_IMPLEMENTED, 4006: PLUGIN_NOT_IMPLEMENTED,
    12: PLUGIN_UNAVAILABLE, 503: PLUGIN_UNAVAILABLE,
    408: PLUGIN_TIMEOUT, 4002: PLUGIN_TIMEOUT,
    11: PLUGIN_INTERNAL, 500: PLUGIN_INTERNAL,
    502: PLUGIN_SERVICE_ERROR,
}
