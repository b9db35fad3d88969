"""Errors in each ecosystem's own shape, and conversion failures as answers.

An app written for OpenAI or Ollama parses errors the way its client library does; an
AOG error envelope makes that library choke instead of raising its own exception type.
Every front door, the guard in front of them and AOG's services route for providers of
another flavor answer through these.
"""

from __future__ import annotations

import json
import logging

from aogstream import errors
from aogstream.convert import PIVOT, ConvertError, TemplateError
from aogstream.convert.anthropic import error_object

log = logging.getLogger(__name__)


def _openai_error(err: errors.GatewayError) -> bytes:
    """OpenAI's error body: the openai client reads `error.message/type/code`."""
    if err.status == 404:
        kind = "not_found_error"
    elif err.status == 401:
        kind = "authentication_error"
    elif err.status < 500:
        kind = "invalid_request_error"
    else:
        kind = "server_error"
    code = "model_not_found" if err.bcode == errors.PLUGIN_MODEL_NOT_FOUND \
        else str(err.bcode.code)
    return json.dumps({"error": {"message": err.message, "type": kind, "code": code}},
                      ensure_ascii=False).encode()


def _ollama_error(err: errors.GatewayError) -> bytes:
    """Ollama's error body: the ollama client raises ResponseError with this string."""
    return json.dumps({"error": err.message}, ensure_ascii=False).encode()


def error_body(flavor: str, err: errors.GatewayError) -> bytes:
    """An error in the shape the flavor's clients expect: Ollama's, AOG's envelope,
    Anthropic's (`/v1/messages`), or OpenAI's (every other built-in flavor speaks an
    OpenAI-compatible API)."""
    if flavor == "anthropic":
        return json.dumps(error_object(err.status, err.message), ensure_ascii=False).encode()
    if flavor == "ollama":
        return _ollama_error(err)
    if flavor == PIVOT:
        return err.body()
    return _openai_error(err)


def conversion_error(exc: ConvertError, *, request: bool,
                     who: str = "") -> errors.GatewayError:
    """A failed conversion as an answer: the request's is the client's mistake (400),
    the provider's answer's is the provider's (502). The template's folder is a server
    path, so the message keeps only the file name (the log keeps it all)."""
    log.warning("conversion failed%s: %s", f" for {who}" if who else "", exc)
    detail = errors.without_paths(str(exc))
    if request:
        return errors.GatewayError(errors.BAD_REQUEST,
                                   f"cannot convert the request: {detail}; check its fields "
                                   "against the API it was sent to")
    return errors.GatewayError(errors.INVOKE_FAILED,
                               f"cannot convert the provider's answer{f' ({who})' if who else ''}"
                               f": {detail}")


def template_error(exc: TemplateError, who: str = "") -> errors.GatewayError:
    """A flavor template that cannot serve this call: the gateway's problem (500)."""
    log.error("flavor template problem%s: %s", f" for {who}" if who else "", exc)
    return errors.GatewayError(errors.TASK_FAILED,
                               f"{who + ': ' if who else ''}{errors.without_paths(str(exc))}")
