"""Rank pooling on a tiny BERT cross-encoder: llama.cpp's scores against a numpy forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import PoolingType

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.embed import EmbedInput, embed
from services.runner.engine import Instance
from services.runner.native import LoadSpec
from services.runner.rerank import rerank
from tests.fixtures.bert_reference import rerank_scores
from tests.runner.bert_gguf import write_tiny_bert

QUERY = "is the sky blue"
DOCS = ["the sky is blue.", "a cat, a dog", "the sea is green", "hello world !", "red sky , blue sea"]


@pytest.fixture
async def reranker(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = write_tiny_bert(tmp_path / "rank.gguf", pooling=PoolingType.RANK, classifier=True, seed=3)
    inst = Instance("rank", LoadSpec(str(path), num_ctx=128))
    await inst.start()
    try:
        yield path, inst
    finally:
        await inst.stop()


async def test_scores_match_numpy_and_batching(reranker) -> None:  # type: ignore[no-untyped-def]
    path, inst = reranker
    scores, count = await inst.call(lambda nm: rerank(nm, QUERY, DOCS, False))
    want, counts = rerank_scores(path, QUERY, DOCS)
    assert count == sum(counts)
    np.testing.assert_allclose(scores, want, rtol=2e-3, atol=2e-3)
    assert len(set(np.round(scores, 3))) == len(DOCS)  # the fixture's scores are distinct
    # One document at a time gives the same scores as the batch.
    for doc, s in zip(DOCS, scores, strict=True):
        one, _ = await inst.call(lambda nm, doc=doc: rerank(nm, QUERY, [doc], False))  # type: ignore[misc]
        assert one[0] == pytest.approx(s, abs=1e-4)


async def test_truncation_and_embed_refused(reranker) -> None:  # type: ignore[no-untyped-def]
    _path, inst = reranker
    long = "sea " * 300
    with pytest.raises(CorralError) as exc:
        await inst.call(lambda nm: rerank(nm, QUERY, [long], False))
    assert exc.value.reason == common_pb2.ERROR_REASON_PROMPT_TOO_LONG
    scores, count = await inst.call(lambda nm: rerank(nm, QUERY, [long, "the sky"], True))
    assert count == 128 + 9 and len(scores) == 2  # the long document is cut to the context
    with pytest.raises(CorralError) as exc:
        await inst.call(lambda nm: rerank(nm, long, ["the sky"], True))
    assert "no room" in exc.value.message
    with pytest.raises(CorralError) as exc:
        await inst.call(lambda nm: embed(nm, [EmbedInput(text="hello")], False, True))
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT and "rerank" in exc.value.message


async def test_embedding_model_is_not_a_reranker(tmp_path: Path) -> None:
    path = write_tiny_bert(tmp_path / "bert.gguf", pooling=PoolingType.CLS)
    inst = Instance("bert", LoadSpec(str(path), num_ctx=128))
    await inst.start()
    try:
        with pytest.raises(CorralError) as exc:
            await inst.call(lambda nm: rerank(nm, QUERY, DOCS, True))
        assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
        assert "does not support reranking" in exc.value.message
    finally:
        await inst.stop()


async def test_rerank_template_pairs_the_texts(tmp_path: Path) -> None:
    """A GGUF rerank template replaces llama-server's BOS q EOS SEP d EOS pairing."""
    template = "[CLS]{document}[SEP]{query}[SEP]"
    path = write_tiny_bert(
        tmp_path / "t.gguf",
        pooling=PoolingType.RANK,
        classifier=True,
        seed=3,
        extra_kv={"tokenizer.chat_template.rerank": template},
    )
    inst = Instance("t", LoadSpec(str(path), num_ctx=128))
    await inst.start()
    try:
        swapped, _ = await inst.call(lambda nm: rerank(nm, "the sky is blue.", [QUERY], False))
        plain, _ = await inst.call(lambda nm: rerank(nm, QUERY, ["the sky is blue."], False))
    finally:
        await inst.stop()
    want, _ = rerank_scores(path, QUERY, ["the sky is blue."])  # [CLS] q [SEP] d [SEP] with q/d swapped back
    assert swapped[0] == pytest.approx(want[0], abs=2e-3)
    assert plain[0] != pytest.approx(want[0], abs=1e-3)


async def test_a_shorter_request_context_cuts_pairs_as_that_instance_would(reranker) -> None:  # type: ignore[no-untyped-def]
    """A lease on a longer instance carries its own num_ctx (the scheduler's covering rule):
    the pairs are cut, and scored, as an instance loaded with that context cuts them."""
    path, inst = reranker
    long = "sea " * 300
    with pytest.raises(CorralError) as exc:
        await inst.call(lambda nm: rerank(nm, QUERY, ["sea " * 60], False, num_ctx=64))
    assert exc.value.reason == common_pb2.ERROR_REASON_PROMPT_TOO_LONG
    cut, count = await inst.call(lambda nm: rerank(nm, QUERY, [long, "the sky"], True, num_ctx=64))
    assert count == 64 + 9
    short = Instance("rank64", LoadSpec(str(path), num_ctx=64))
    await short.start()
    try:
        want, want_count = await short.call(lambda nm: rerank(nm, QUERY, [long, "the sky"], True))
    finally:
        await short.stop()
    assert want_count == count
    np.testing.assert_allclose(cut, want, rtol=1e-4, atol=1e-4)
