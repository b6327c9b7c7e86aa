"""Context shift on a tiny llama (no sliding window) and an embedding-only tiny BERT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import PoolingType

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.embed import EmbedInput, embed
from services.runner.engine import Instance
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec
from services.runner.sampling import SamplingParams
from tests.ggufs import write_tiny_gguf
from tests.runner.bert_gguf import write_tiny_bert
from tests.runner.conftest import collect


async def test_context_shift_lets_generation_run_past_the_context(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=256)
    inst = Instance("shift", LoadSpec(str(model.path), num_ctx=64, num_parallel=2))
    await inst.start()
    try:
        prompt = (1, *(260 + i % 10 for i in range(40)))
        # High temperature over the whole vocabulary: EOS (1 of 273) is drawn rarely.
        params = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, seed=11, num_predict=150, num_keep=8)
        r = await collect(inst.generate(GenerateSpec(prompt_tokens=prompt, params=params)))
        s = r.last.stats
        assert s is not None
        # 41 prompt tokens + 150 generated in a 64-token context: it shifted several times.
        assert r.last.done_reason == common_pb2.DONE_REASON_LENGTH and s.eval_count == 150
        # The slot's cache now holds the kept prefix; a new request still works.
        again = await collect(
            inst.generate(GenerateSpec(prompt_tokens=prompt, params=SamplingParams(temperature=0, num_predict=3)))
        )
        assert again.last.stats is not None and again.last.stats.eval_count >= 1
    finally:
        await inst.stop()


@pytest.mark.parametrize("pooling", [PoolingType.MEAN, PoolingType.CLS, PoolingType.LAST])
async def test_bert_embeddings_batch_equals_one_by_one(tmp_path: Path, pooling: PoolingType) -> None:
    path = write_tiny_bert(tmp_path / "bert.gguf", pooling=pooling)
    inst = Instance("bert", LoadSpec(str(path), num_ctx=128))
    await inst.start()
    try:
        texts = ["hello world", "the sky is blue.", "cats", "red green red green dog"]
        inputs = [EmbedInput(text=t) for t in texts]
        batch, count = await inst.call(lambda nm: embed(nm, inputs, False, True))
        assert count == 4 + 7 + 4 + 7  # [CLS] ... [SEP] around each
        for item, vec in zip(inputs, batch, strict=True):
            one, _n = await inst.call(lambda nm, item=item: embed(nm, [item], False, True))  # type: ignore[misc]
            assert float(np.dot(vec, one[0])) >= 0.999
        assert float(np.dot(batch[0], batch[1])) < 0.999  # different inputs, different vectors
        # Generation is refused; over-long inputs are cut only with truncate.
        with pytest.raises(CorralError) as exc:
            await collect(inst.generate(GenerateSpec(prompt="hello")))
        assert exc.value.reason == common_pb2.ERROR_REASON_UNSUPPORTED
        long = EmbedInput(text="sea " * 300)
        with pytest.raises(CorralError):
            await inst.call(lambda nm: embed(nm, [long], False, True))
        vecs, n = await inst.call(lambda nm: embed(nm, [long], True, True))
        assert n == 128 and len(vecs[0]) == 32
    finally:
        await inst.stop()


async def test_bert_pooling_types_differ(tmp_path: Path) -> None:
    vectors = []
    for pooling in (PoolingType.MEAN, PoolingType.CLS):
        path = write_tiny_bert(tmp_path / f"bert-{pooling.name}.gguf", pooling=pooling)
        inst = Instance("bert", LoadSpec(str(path), num_ctx=128))
        await inst.start()
        try:
            vecs, _n = await inst.call(lambda nm: embed(nm, [EmbedInput(text="the sea is blue")], False, True))
            vectors.append(vecs[0])
        finally:
            await inst.stop()
    assert float(np.dot(vectors[0], vectors[1])) < 0.99


def write_tiny_lora(path: Path, *, n_embd: int = 32, rank: int = 4, seed: int = 1) -> Path:
    """A LoRA adapter for write_tiny_gguf's model: q and v projections of every layer."""
    from gguf import GGUFWriter

    rng = np.random.default_rng(seed)
    w = GGUFWriter(path, "llama")
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for i in range(2):
        for name, n_out in (("attn_q", n_embd), ("attn_v", 16)):  # 2 kv heads x head dim 8
            w.add_tensor(
                f"blk.{i}.{name}.weight.lora_a", (rng.standard_normal((rank, n_embd)) * 0.5).astype(np.float32)
            )
            w.add_tensor(f"blk.{i}.{name}.weight.lora_b", (rng.standard_normal((n_out, rank)) * 0.5).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


async def first_logprobs(model: Path, adapters: tuple[tuple[str, float], ...]) -> np.ndarray:
    inst = Instance("lora", LoadSpec(str(model), num_ctx=64, adapters=adapters))
    await inst.start()
    try:
        params = SamplingParams(temperature=0, num_predict=1)
        r = await collect(inst.generate(GenerateSpec(prompt_tokens=(1, 260, 261, 262), params=params, top_logprobs=20)))
        top = next(p for e in r.events for p in e.logprobs).top
        return np.array(sorted((t.token_id, t.logprob) for t in top))
    finally:
        await inst.stop()


async def test_lora_adapters_with_scales(tmp_path: Path) -> None:
    model = write_tiny_gguf(tmp_path / "tiny.gguf", context_length=256).path
    lora = str(write_tiny_lora(tmp_path / "lora.gguf"))
    base = await first_logprobs(model, ())
    full = await first_logprobs(model, ((lora, 1.0),))
    halves = await first_logprobs(model, ((lora, 0.5), (lora, 0.5)))
    assert base.shape != full.shape or not np.allclose(base, full, atol=1e-3)  # the adapter changes the model
    assert np.allclose(full, halves, atol=1e-3)  # LoRA is linear in its scale: two halves = one whole
    with pytest.raises(CorralError) as exc:
        await Instance("bad-lora", LoadSpec(str(model), adapters=((str(tmp_path / "none.gguf"), 1.0),))).start()
    assert exc.value.reason == common_pb2.ERROR_REASON_LOAD_FAILED
