"""POST /api/rerank and /v1/rerank end to end with a tiny BERT cross-encoder GGUF."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from gguf import PoolingType

from tests.e2e.cli import corral
from tests.fixtures.bert_reference import rerank_scores
from tests.fixtures.tiny_bert_hf import hf_score, pair_ids, write_tiny_cross_encoder
from tests.runner.bert_gguf import write_tiny_bert
from tests.stack import Stack, create_model

QUERY = "is the sky blue"
DOCS = ["the sky is blue.", "a cat, a dog", "the sea is green", "hello world !", "red sky , blue sea"]


@pytest.fixture(scope="module")
def models(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("rerank")
    paths = {
        "tiny-rerank": write_tiny_bert(d / "rank.gguf", pooling=PoolingType.RANK, classifier=True, seed=3),
        "tiny-embed": write_tiny_bert(d / "embed.gguf", pooling=PoolingType.CLS),
    }
    for name, path in paths.items():
        assert create_model(stack.url, name, path)[-1] == {"status": "success"}
    return paths


def post(stack: Stack, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(stack.url + path, json=body, timeout=120)


@pytest.mark.parametrize("path", ["/api/rerank", "/v1/rerank"])
def test_rerank_orders_by_the_reference_scores(stack: Stack, models: dict[str, Path], path: str) -> None:
    want, counts = rerank_scores(models["tiny-rerank"], QUERY, DOCS)
    r = post(stack, path, {"model": "tiny-rerank", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-rerank" and body["object"] == "list"
    assert body["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    results = body["results"]
    assert [x["index"] for x in results] == list(np.argsort(want)[::-1])
    for x in results:
        assert x["relevance_score"] == pytest.approx(want[x["index"]], abs=2e-3)
        assert "document" not in x


def test_top_n_and_return_documents(stack: Stack, models: dict[str, Path]) -> None:
    want, _ = rerank_scores(models["tiny-rerank"], QUERY, DOCS)
    docs: list[object] = [{"text": d} for d in DOCS[:3]] + DOCS[3:]  # objects and strings mix
    body = {"model": "tiny-rerank", "query": QUERY, "documents": docs, "top_n": 2, "return_documents": True}
    results = post(stack, "/v1/rerank", body).json()["results"]
    best = list(np.argsort(want)[::-1][:2])
    assert [x["index"] for x in results] == best
    assert [x["document"] for x in results] == [{"text": DOCS[i]} for i in best]
    # top_n above the number of documents returns them all.
    body |= {"top_n": 50, "return_documents": False}
    assert len(post(stack, "/api/rerank", body).json()["results"]) == len(DOCS)


def test_show_lists_rank(stack: Stack, models: dict[str, Path]) -> None:
    caps = post(stack, "/api/show", {"model": "tiny-rerank"}).json()["capabilities"]
    assert caps == ["rank"]


def test_errors(stack: Stack, models: dict[str, Path]) -> None:
    r = post(stack, "/api/rerank", {"model": "tiny-embed", "query": QUERY, "documents": DOCS})
    assert r.status_code == 400 and r.json()["code"] == "capability_missing"
    assert "does not support rerank" in r.json()["error"]
    r = post(stack, "/v1/rerank", {"model": "tiny-embed", "query": QUERY, "documents": DOCS})
    assert r.status_code == 400 and "does not support rerank" in r.json()["error"]["message"]
    for bad in ({"documents": []}, {"documents": "one"}, {"documents": [1]}, {"top_n": 0}, {"query": None}):
        r = post(stack, "/api/rerank", {"model": "tiny-rerank", "query": QUERY, "documents": DOCS} | bad)
        assert r.status_code == 400, (bad, r.text)
    r = post(stack, "/api/rerank", {"model": "missing", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and r.json()["error"] == "model 'missing' not found"
    r = post(stack, "/v1/rerank", {"model": "missing", "query": QUERY, "documents": DOCS})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    # A reranker produces no embeddings.
    r = post(stack, "/api/embed", {"model": "tiny-rerank", "input": "hello"})
    assert r.status_code == 400 and "/api/rerank" in r.json()["error"]


def test_imported_cross_encoder_reranks(stack: Stack, tmp_path: Path) -> None:
    """`corral create` from a Hugging Face BertForSequenceClassification directory, then /v1/rerank."""
    src = write_tiny_cross_encoder(tmp_path / "hf")
    (tmp_path / "Modelfile").write_text(f"FROM {src}\n")
    r = corral(stack, "create", "tiny-ce", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert post(stack, "/api/show", {"model": "tiny-ce"}).json()["capabilities"] == ["rank"]
    docs = ["the sky is blue .", "a cat , a dog", "the sea is green"]
    results = post(stack, "/v1/rerank", {"model": "tiny-ce", "query": "is the sky blue", "documents": docs}).json()
    pairs = [pair_ids("is the sky blue", d) for d in docs]
    want = [hf_score(src, ids, [0] * len(ids)) for ids, _ in pairs]  # llama.cpp: token type 0 throughout
    assert [x["index"] for x in results["results"]] == list(np.argsort(want)[::-1])
    for x in results["results"]:
        assert x["relevance_score"] == pytest.approx(want[x["index"]], abs=1e-2)  # F16 weights
