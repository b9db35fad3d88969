"""`POST /v1/rerank`: the rerank door that Jina-, Cohere- and vLLM-style clients call.

OpenAI has no rerank API, so no flavor template names this path; yet the clients that
retrieval stacks use (Jina's and Cohere's v1 APIs, and the OpenAI-compatible servers
that copied them: vLLM, LocalAI, Infinity) all send the same request to
`/v1/rerank`:

    {"model"?, "query": str, "documents": [str | {"text": str}], "top_n"?: int,
     "return_documents"?: bool}

and read `{"results": [{"index", "relevance_score", "document"?: {"text"}}], "usage"}`
back (plus `model` and `id`). That is AOG's own `rerank` service, so the door checks
the body, turns document objects into their text, and hands the request to the same
routing as `/aog/v0.2/services/rerank` (model names, hybrid policy, fallback,
conversion for providers of another flavor such as OpenVINO's): whichever plugin
ranks there ranks here. Errors come back in OpenAI's shape (`error.message`), the one
these OpenAI-compatible servers use, each naming the field at fault.
"""

from __future__ import annotations

import json
from typing import Any

from aogstream import errors, safejson
from aogstream.asgi_types import Headers, Receive, Scope, Send
from aogstream.convert import PIVOT
from aogstream.gateway import Gateway
from aogstream.http.asgi import CLOSE_AFTER, ClientGone, parse_object, read_body, send_json
from aogstream.http.flavor_calls import Door, FlavorCalls, send_bytes
from aogstream.http.flavor_errors import error_body

RERANK_PATH = "/v1/rerank"
SERVICE = "rerank"
ERROR_FLAVOR = "openai"
# The request goes on in AOG's shape, so the pivot's door: no template conversion on
# the way in, AOG's answer on the way out (which is already the shape clients read).
DOOR = Door(PIVOT, SERVICE, "POST", RERANK_PATH)
EXAMPLE = 'with "query" and "documents" (and optionally "model", "top_n", "return_documents")'


def is_rerank_door(path: str) -> bool:
    return path.rstrip("/") == RERANK_PATH


def _bad(message: str) -> errors.GatewayError:
    return errors.GatewayError(errors.BAD_REQUEST, message)


def _document_text(doc: Any, i: int) -> str:
    """A document as AOG's rerank takes it: a string, or Jina's/Cohere's `{"text"}`."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return str(doc["text"])
    what = "an object without a 'text' string" if isinstance(doc, dict) else \
        safejson.type_name(doc)
    raise _bad(f"'documents[{i}]' must be a string or an object with a 'text' string, "
               f"not {what}")


def rerank_request(obj: dict[str, Any]) -> dict[str, Any]:
    """The body of `POST /v1/rerank` as AOG's rerank request, or a 400 naming the field
    and saying what it must be. Limits (how many documents) are the ranking plugin's,
    which names them; fields other rerank APIs add (`rank_fields`, `truncation`, ...)
    are ignored."""
    out: dict[str, Any] = {}
    model = obj.get("model")
    if model is not None:
        if not isinstance(model, str) or not model.strip():
            raise _bad("'model' must be a model's name (a non-empty string); leave it out "
                       "for the rerank service's default model")
        out["model"] = model
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise _bad("'query' must be a non-empty string (the text to rank the documents by)"
                   + ("" if query is None else f", not {safejson.type_name(query)}"))
    out["query"] = query
    documents = obj.get("documents")
    if not isinstance(documents, list) or not documents:
        got = "" if documents is None else ", not an empty list" \
            if isinstance(documents, list) else f", not {safejson.type_name(documents)}"
        raise _bad("'documents' must be a non-empty list of strings (or of {\"text\": ...} "
                   f"objects){got}")
    out["documents"] = [_document_text(doc, i) for i, doc in enumerate(documents)]
    top_n = obj.get("top_n")
    if top_n is not None:
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
            got = str(top_n) if isinstance(top_n, int) and not isinstance(top_n, bool) \
                else safejson.type_name(top_n)
            raise _bad(f"'top_n' must be a positive integer (how many of the best documents "
                       f"to return), not {got}")
        out["top_n"] = top_n
    with_docs = obj.get("return_documents")
    if with_docs is not None:
        if not isinstance(with_docs, bool):
            raise _bad(f"'return_documents' must be true or false, not "
                       f"{safejson.type_name(with_docs)}")
        out["return_documents"] = with_docs
    return out


def rerank_answer(data: bytes) -> bytes:
    """AOG's rerank answer as the door's: `results` checked, `usage` always present
    (clients add it up), other fields (`id`, `model`) as the provider gave them."""
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(results, list):
        raise errors.GatewayError(errors.INVOKE_FAILED,
                                  "the rerank provider's answer has no 'results' list")
    usage = answer.get("usage")
    if not isinstance(usage, dict):
        answer["usage"] = {"prompt_tokens": 0, "total_tokens": 0}
    return json.dumps(answer, ensure_ascii=False).encode()


class RerankDoor:
    """Serves `POST /v1/rerank` through the gateway's rerank routes."""

    def __init__(self, gateway: Gateway, max_body: int, calls: FlavorCalls) -> None:
        self.gateway = gateway
        self.max_body = max_body
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_read = False
        try:
            if scope["method"] != "POST":
                raise errors.GatewayError(errors.METHOD_NOT_ALLOWED,
                                          f"{scope['method']} is not allowed on "
                                          f"{RERANK_PATH}; use POST")
            self.gateway.check_service(SERVICE)
            cfg = self.gateway.config
            body = await read_body(scope, receive, self.max_body, cfg.body_timeout,
                                   cfg.body_min_rate)
            body_read = True
            aog_obj = rerank_request(parse_object(body, EXAMPLE))
            routes = self.gateway.routes(SERVICE, aog_obj)
            model = aog_obj.get("model")

            async def reply(data: bytes, ctype: bytes, served_by: Headers) -> None:
                await send_bytes(send, 200, rerank_answer(data), b"application/json",
                                 served_by)

            await self.calls.dispatch(DOOR, routes, json.dumps(aog_obj).encode(), model,
                                      False, receive, send, reply=reply,
                                      error_flavor=ERROR_FLAVOR)
        except errors.GatewayError as err:
            await send_json(send, err.status, error_body(ERROR_FLAVOR, err),
                            None if body_read else CLOSE_AFTER)
        except ClientGone:
            return
