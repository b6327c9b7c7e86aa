"""JSON Schema, logprobs, embeddings, prompt truncation and the decode retry, on the real Gemma 3 270M."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.embed import EmbedInput, embed
from services.runner.engine import Instance
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec, NativeModel
from services.runner.sampling import SamplingParams
from tests.runner.conftest import collect

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "pets": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "pets"],
}


def turn(text: str) -> str:
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
async def inst(gemma_path: Path) -> AsyncIterator[Instance]:
    instance = Instance("features", LoadSpec(str(gemma_path), num_ctx=512, num_parallel=2))
    await instance.start()
    yield instance
    await instance.stop()


def validate(doc: Any, schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, schema)


async def test_json_schema_output_validates(inst: Instance) -> None:
    for seed in (1, 2):
        params = SamplingParams(temperature=0.7, seed=seed, num_predict=120)
        prompt = turn("Invent a person and reply with JSON: name, age and pets.")
        r = await collect(
            inst.generate(GenerateSpec(prompt=prompt, params=params, add_bos=True, json_schema=json.dumps(SCHEMA)))
        )
        assert r.last.done_reason == common_pb2.DONE_REASON_STOP, r.text  # the grammar completed, then EOS
        validate(json.loads(r.text), SCHEMA)


async def test_json_schema_wins_over_grammar_and_bad_schemas_are_refused(inst: Instance) -> None:
    params = SamplingParams(temperature=0, num_predict=40)
    schema = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]})
    r = await collect(
        inst.generate(
            GenerateSpec(prompt=turn("Is water wet?"), params=params, grammar='root ::= "x"', json_schema=schema)
        )
    )
    assert isinstance(json.loads(r.text)["ok"], bool)
    for bad in ("{not json", '{"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}'):
        with pytest.raises(CorralError) as exc:
            await collect(inst.generate(GenerateSpec(prompt=turn("x"), json_schema=bad)))
        assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT


async def test_logprobs_per_token_with_alternatives(inst: Instance) -> None:
    params = SamplingParams(temperature=0, num_predict=6)
    r = await collect(
        inst.generate(
            GenerateSpec(prompt=turn("Say hello."), params=params, add_bos=True, logprobs=True, top_logprobs=5)
        )
    )
    positions = [p for e in r.events for p in e.logprobs]
    assert len(positions) == len(r.token_ids) == 6
    for p in positions:
        assert p.sampled.logprob <= 0 and len(p.top) == 5
        values = [t.logprob for t in p.top]
        assert values == sorted(values, reverse=True) and sum(math.exp(v) for v in values) <= 1.0001
        assert p.top[0].token_id == p.sampled.token_id  # greedy takes the most likely token
        assert p.sampled.logprob == pytest.approx(values[0], abs=1e-5)
        assert p.sampled.bytes.decode("utf-8", "replace") == p.sampled.token
    # top_logprobs 0: only the sampled token; more than 20 is clamped.
    r0 = await collect(inst.generate(GenerateSpec(prompt=turn("Say hello."), params=params, logprobs=True)))
    assert all(not p.top for e in r0.events for p in e.logprobs)
    r30 = await collect(inst.generate(GenerateSpec(prompt=turn("Say hello."), params=params, top_logprobs=30)))
    assert all(len(p.top) == 20 for e in r30.events for p in e.logprobs)


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


TEXTS = [
    "The sky is blue because of Rayleigh scattering.",
    "cats",
    "A lighthouse keeper found a message in a bottle on a stormy night.",
    "Embeddings map text to vectors.",
    "hello world",
]


async def test_batch_embeddings_equal_one_by_one(inst: Instance) -> None:
    inputs = [EmbedInput(text=t) for t in TEXTS]
    batch, count = await inst.call(lambda nm: embed(nm, inputs, False, True))
    assert len(batch) == len(TEXTS) and len(batch[0]) == 640
    total = 0
    for item, vec in zip(inputs, batch, strict=True):
        one, n = await inst.call(lambda nm, item=item: embed(nm, [item], False, True))  # type: ignore[misc]
        total += n
        assert cosine(vec, one[0]) >= 0.999
        assert abs(float(np.linalg.norm(one[0])) - 1.0) < 1e-5
    assert count == total
    # Token-id inputs give the same vector as their text.
    ids = await inst.call(lambda nm: nm.tokenize(TEXTS[0], True, False))
    by_ids, n_ids = await inst.call(lambda nm: embed(nm, [EmbedInput(tokens=tuple(ids))], False, True))
    assert n_ids == len(ids) and cosine(by_ids[0], batch[0]) >= 0.999
    # Generation still works: embeddings use their own context.
    r = await collect(
        inst.generate(
            GenerateSpec(prompt=turn("Hi"), params=SamplingParams(temperature=0, num_predict=3), add_bos=True)
        )
    )
    assert r.last.stats is not None and r.last.stats.eval_count == 3


async def test_embedding_truncation_and_limits(inst: Instance) -> None:
    long = EmbedInput(text="word " * 2000)
    with pytest.raises(CorralError) as exc:
        await inst.call(lambda nm: embed(nm, [long], False, True))
    assert exc.value.reason == common_pb2.ERROR_REASON_PROMPT_TOO_LONG
    vecs, n = await inst.call(lambda nm: embed(nm, [long, EmbedInput(text="short")], True, False))
    assert len(vecs) == 2 and n <= 512 + 3
    assert abs(float(np.linalg.norm(vecs[1])) - 1.0) > 1e-3  # normalize=False leaves the raw mean
    assert await inst.call(lambda nm: embed(nm, [], True, True)) == ([], 0)
    with pytest.raises(CorralError):
        await inst.call(lambda nm: embed(nm, [EmbedInput(tokens=(10**9,))], True, True))


async def test_truncate_keeps_num_keep_and_the_newest_tokens(inst: Instance) -> None:
    prompt = (2,) + (9259,) * 700  # longer than num_ctx 512
    params = SamplingParams(temperature=0, num_predict=2, num_keep=4)
    with pytest.raises(CorralError):
        await collect(inst.generate(GenerateSpec(prompt_tokens=prompt, params=params)))
    r = await collect(inst.generate(GenerateSpec(prompt_tokens=prompt, params=params, truncate=True)))
    s = r.last.stats
    assert s is not None and s.eval_count == 2
    # Ollama's limit: num_ctx - max((num_ctx - keep) / 2, 1) with keep = num_keep + BOS.
    assert s.prompt_eval_count + s.prompt_cached_count == 512 - (512 - 5) // 2


async def test_a_shorter_request_context_behaves_as_an_instance_of_that_context(gemma_path: Path) -> None:
    """The scheduler leases an instance loaded with a longer context to a request for a
    shorter one (LoadKey.covers): the sequence is then held to the request's num_ctx, as if
    the model had been loaded with it. Batch-invariant kernels (flash attention over a q8_0
    cache), so that the two contexts' different batch and cache sizes round alike."""

    def spec(num_ctx: int) -> LoadSpec:
        return LoadSpec(str(gemma_path), num_ctx=num_ctx, flash_attention=True, kv_cache_type="q8_0")

    inst, small = Instance("features-large", spec(512)), Instance("features-small", spec(96))
    await inst.start()
    await small.start()
    try:
        assert inst.batcher is not None and inst.batcher.nm.batch_invariant
        until_full = SamplingParams(temperature=0, num_predict=-1)
        story = GenerateSpec(prompt=turn("Write a long story about a lighthouse."), add_bos=True, params=until_full)
        held = await collect(inst.generate(replace(story, num_ctx=96)))
        fresh = await collect(small.generate(story))
        for r in (held, fresh):
            assert r.last.done_reason == common_pb2.DONE_REASON_LENGTH
            assert r.last.stats is not None
            prompt = r.last.stats.prompt_eval_count + r.last.stats.prompt_cached_count
            assert prompt + r.last.stats.eval_count == 96 + 1  # the last token is sampled, not decoded
        assert held.token_ids == fresh.token_ids
        long = GenerateSpec(prompt_tokens=(2,) + (9259,) * 150, params=SamplingParams(num_predict=1, num_keep=4))
        with pytest.raises(CorralError) as exc:
            await collect(inst.generate(replace(long, num_ctx=96)))
        assert exc.value.reason == common_pb2.ERROR_REASON_PROMPT_TOO_LONG
        cut = await collect(inst.generate(replace(long, num_ctx=96, truncate=True)))
        s = cut.last.stats
        assert s is not None and s.prompt_eval_count + s.prompt_cached_count == 96 - (96 - 5) // 2
        words = EmbedInput(text="word " * 200)
        with pytest.raises(CorralError):
            await inst.call(lambda nm: embed(nm, [words], False, True, num_ctx=96))
        _, n = await inst.call(lambda nm: embed(nm, [words], True, True, num_ctx=96))
        assert n == 96
    finally:
        await small.stop()
        await inst.stop()


async def test_decode_retries_with_half_the_batch(inst: Instance) -> None:
    """llama_decode returning 1 (no KV slot) makes the batcher retry smaller views."""
    seen: list[int] = []

    def refuse_big(nm: NativeModel) -> None:
        real = nm.decode

        def decode(n_tokens: int, start: int = 0) -> int:
            seen.append(n_tokens)
            return 1 if n_tokens > 16 else real(n_tokens, start)

        nm.decode = decode  # type: ignore[method-assign]

    await inst.call(refuse_big)
    try:
        params = SamplingParams(temperature=0, num_predict=4)
        r = await collect(
            inst.generate(GenerateSpec(prompt=turn("Tell me about retries " * 8), params=params, add_bos=True))
        )
    finally:
        await inst.call(lambda nm: delattr(nm, "decode"))
    assert r.last.stats is not None and r.last.stats.eval_count == 4
    assert any(n > 16 for n in seen) and any(n <= 16 for n in seen)


async def test_grammar_subset_resampling_equals_the_full_filter(
    inst: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On rejection, filtering only the most likely tokens gives the full filter's token."""
    from services.runner import batcher

    prompt = turn("Invent a person and reply with JSON: name, age and pets.")
    schema = json.dumps(SCHEMA)
    await collect(inst.generate(GenerateSpec(prompt=prompt, params=SamplingParams(num_predict=0), add_bos=True)))
    for params in (SamplingParams(temperature=0, num_predict=60), SamplingParams(seed=3, top_k=40, num_predict=60)):
        fast = await collect(
            inst.generate(GenerateSpec(prompt=prompt, params=params, add_bos=True, json_schema=schema))
        )
        with monkeypatch.context() as m:
            m.setattr(batcher, "exact_subset_k", lambda _p: 0)
            full = await collect(
                inst.generate(GenerateSpec(prompt=prompt, params=params, add_bos=True, json_schema=schema))
            )
        assert fast.text and fast.token_ids == full.token_ids


async def test_sampling_from_the_top_logits_picks_what_llama_cpp_picks(
    inst: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy takes numpy's argmax of the logits, top-k sampling samples from the tokens near
    the highest logit, instead of llama.cpp's sampler over the whole vocabulary; the tokens
    are the same, with and without a grammar, greedy and seeded."""
    import llama_cpp as lc

    from services.runner import batcher
    from services.runner.grammar import Candidates

    calls = fills = 0
    sample, fill = lc.llama_sampler_sample, Candidates.fill

    def counted(*args: Any) -> int:
        nonlocal calls
        calls += 1
        return int(sample(*args))

    def counted_fill(self: Candidates, logits: Any) -> Any:
        nonlocal fills
        fills += 1
        return fill(self, logits)

    monkeypatch.setattr(lc, "llama_sampler_sample", counted)
    monkeypatch.setattr(Candidates, "fill", counted_fill)
    prompts = [turn("Name three rivers and say one thing about each."), turn("Write a haiku about rain.")]
    for params in (SamplingParams(temperature=0, num_predict=48), SamplingParams(seed=7, num_predict=48)):
        for prompt in prompts:
            for schema in ("", json.dumps(SCHEMA)):
                spec = GenerateSpec(prompt=prompt, params=params, add_bos=True, json_schema=schema)
                fast = await collect(inst.generate(spec))
                assert calls == 0  # llama.cpp's sampler was not asked
                # nor the vocabulary filled in (a grammar's rejection does; so may a very flat row)
                assert fills <= len(fast.token_ids) // 10 or schema
                with monkeypatch.context() as m:
                    m.setattr(batcher, "exact_subset_k", lambda _p: 0)
                    slow = await collect(inst.generate(spec))
                assert slow.token_ids and fast.token_ids == slow.token_ids
                assert calls > 0 or schema  # with a grammar the chain is applied, not sampled
                calls = fills = 0
