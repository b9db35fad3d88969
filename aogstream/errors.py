"""Errors every layer can raise and every north adapter knows how to show.

AOG clients parse `{"business_code": N, "message": "..."}` with an HTTP status, so a
GatewayError carries both numbers from AOG's business-code families (10000 service,
40000 task, 100000 plugin) and a message that says what went wrong and what to do.
"""

from __future__ import annotations

import json
import os
import re

import attrs


@attrs.frozen
class Bcode:
    """An HTTP status and an AOG business code: the class of an error."""

    status: int
    code: int


# The one table of business codes, by AOG's families (its internal/utils/bcode). A code
# that shows with more than one HTTP status (40002, 100004) is kept as AOG answers it.

# 10000 service
SERVICE_OK = Bcode(200, 10000)
BAD_REQUEST = Bcode(400, 10001)  # the service family's "bad request", used by every route
SERVICE_INSTALL_ENGINE = Bcode(500, 10003)
SERVICE_START_ENGINE = Bcode(500, 10004)
SERVICE_PULL_MODEL = Bcode(500, 10006)
SERVICE_PROVIDER_EXISTS = Bcode(409, 10009)
SERVICE_NOT_FOUND = Bcode(404, 10011)
SERVICE_VERSION = Bcode(422, 10014)
SERVICE_UNSUPPORTED = Bcode(400, 10015)
SERVICE_POLICY = Bcode(400, 10016)
SERVICE_AUTH_TYPE = Bcode(400, 10018)

# 20000 service provider
PROVIDER_OK = Bcode(200, 20000)
PROVIDER_BAD = Bcode(400, 20001)
PROVIDER_NOT_FOUND = Bcode(404, 20002)  # AOG: "provider invalid"
PROVIDER_UNAVAILABLE = Bcode(400, 20003)
PROVIDER_AUTH_LOST = Bcode(400, 20006)
PROVIDER_BAD_URL = Bcode(400, 20007)
PROVIDER_CANNOT_DELETE = Bcode(400, 20008)

# 30000 model (the gateway's own records: rows, pulls)
MODEL_OK = Bcode(200, 30000)
MODEL_BAD = Bcode(400, 30001)
MODEL_BUSY = Bcode(409, 30002)
MODEL_NOT_FOUND = Bcode(404, 30003)
MODEL_ENGINE_DELETE = Bcode(500, 30006)

# 40000 task (one call through a service)
NO_TARGET_PROVIDER = Bcode(404, 40001)
READ_BODY = Bcode(400, 40002)
BODY_TOO_LARGE = Bcode(413, 40002)
BODY_TIMEOUT = Bcode(408, 40002)
BAD_JSON = Bcode(400, 40003)
UNSUPPORTED_MEDIA = Bcode(415, 40004)
METHOD_NOT_ALLOWED = Bcode(405, 40005)
INVOKE_FAILED = Bcode(502, 40017)
HOST_REFUSED = Bcode(403, 40030)
ORIGIN_REFUSED = Bcode(403, 40031)
KEY_REQUIRED = Bcode(401, 40032)
WS_MESSAGE_FORMAT = Bcode(400, 40042)
TASK_FAILED = Bcode(500, 40071)
STORE_UNAVAILABLE = Bcode(503, 40080)  # the database cannot be reached or used now

# 100000 plugin (management of plugins, and what a plugin answered)
PLUGIN_OK = Bcode(200, 100000)
PLUGIN_NOT_FOUND = Bcode(404, 100001)
PLUGIN_LOAD_FAILED = Bcode(500, 100002)
PLUGIN_NOT_RUNNING = Bcode(503, 100003)
PLUGIN_INVALID = Bcode(400, 100004)
PLUGIN_CONFLICT = Bcode(409, 100004)
PLUGIN_TIMEOUT = Bcode(504, 100005)
PLUGIN_UNAVAILABLE = Bcode(503, 100006)
PLUGIN_AUTH_FAILED = Bcode(401, 100102)
ENGINE_NOT_INSTALLED = Bcode(412, 100201)
ENGINE_NOT_RUNNING = Bcode(503, 100205)
PLUGIN_MODEL_NOT_FOUND = Bcode(404, 100301)  # the plugin does not have the model
PLUGIN_SERVICE_ERROR = Bcode(502, 100401)
PLUGIN_NOT_IMPLEMENTED = Bcode(501, 100402)
PLUGIN_BAD_REQUEST = Bcode(400, 100403)
PLUGIN_INTERNAL = Bcode(500, 100404)

SUCCESS_MESSAGES: dict[int, str] = {
    SERVICE_OK.code: "service interface call success",
    PROVIDER_OK.code: "service provider interface call success",
    MODEL_OK.code: "model interface call success",
    PLUGIN_OK.code: "Plugin operation success",
}
"""The message of a management call's success envelope, by family."""

# An absolute path not preceded by a word character (so `a/b` in an expression, or a
# URL path after a host name, is left alone): its folders are dropped, its name kept.
_ABSOLUTE_DIRS = re.compile(r"(?<![\w.$~:/])/([\w.+@-]+)(?:/[\w.+@-]+)*/(?=[\w.+@-])")
# Top folders of file systems, whether or not this machine has them (a plugin may run
# elsewhere); any other top folder counts only if it exists here. What is left alone is
# a URL path an error names: the gateway's routes (`PUT /aog/v0.2/service_provider`)
# and a cloud's (`answered 404 for /chat/completions`) are what the user must act on.
_ROOTS = frozenset({"home", "root", "tmp", "var", "srv", "opt", "usr", "etc", "mnt", "media",
                    "run", "data", "work", "workspace", "Users", "private", "Volumes", "nix",
                    "snap", "lib", "lib64", "bin", "sbin", "proc", "dev", "sys", "app"})


def _folders(match: re.Match[str]) -> str:
    top = match.group(1)
    return "" if top in _ROOTS or os.path.isdir("/" + top) else match.group(0)


def without_paths(text: str) -> str:
    """`text` with the folders of file paths removed (`/srv/x/openai.yaml` becomes
    `openai.yaml`): answers may name a file but never show where it lives."""
    return _ABSOLUTE_DIRS.sub(_folders, text)


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
            bc = PLUGIN_MODEL_NOT_FOUND if code == 3000 else PLUGIN_SERVICE_ERROR
        else:
            bc = PLUGIN_SERVICE_ERROR
    # a plugin's own failure (an engine's traceback, an OSError naming a model file)
    # may quote where its files live: the answer names a file, never its folders
    text = without_paths(message) or "the plugin reported an error without a message"
    return GatewayError(bc, f"{plugin}: {text} (plugin code {code})")


_PLUGIN_CODES: dict[int, Bcode] = {
    2: PLUGIN_BAD_REQUEST, 400: PLUGIN_BAD_REQUEST, 4003: PLUGIN_BAD_REQUEST,
    3: PLUGIN_MODEL_NOT_FOUND, 404: PLUGIN_MODEL_NOT_FOUND, 4000: SERVICE_NOT_FOUND,
    5: PLUGIN_AUTH_FAILED, 14: PLUGIN_AUTH_FAILED, 401: PLUGIN_AUTH_FAILED,
    7: ENGINE_NOT_INSTALLED, 412: ENGINE_NOT_INSTALLED, 2001: ENGINE_NOT_INSTALLED,
    10: PLUGIN_NOT_IMPLEMENTED, 501: PLUGIN_NOT_IMPLEMENTED,
    4005: PLUGIN_NOT_IMPLEMENTED, 4006: PLUGIN_NOT_IMPLEMENTED,
    12: PLUGIN_UNAVAILABLE, 503: PLUGIN_UNAVAILABLE,
    408: PLUGIN_TIMEOUT, 4002: PLUGIN_TIMEOUT,
    11: PLUGIN_INTERNAL, 500: PLUGIN_INTERNAL,
    502: PLUGIN_SERVICE_ERROR,
}
