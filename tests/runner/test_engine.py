"""The engine against the real Gemma 3 270M: no gRPC, no mocks of llama.cpp.

llama.cpp's CPU kernels accumulate in a different order for a one-token batch
than for a whole prompt, so a prefix-cache hit changes the logits in their last
bits and can flip a near-tie. Determinism is therefore checked between runs
with the same cache state: a warm-up (num_predict 0) caches the prompt first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.engine import Instance
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec
from services.runner.sampling import SamplingParams
from tests.runner.conftest import PROMPT, collect, eventually

GREEDY = SamplingParams(temperature=0, num_predict=24)
# Near-uniform sampling over the whole vocabulary: an end-of-generation token is
# vanishingly unlikely, so these streams run until cancelled or num_predict.
NOISE = SamplingParams(temperature=2.0, top_k=0, top_p=1.0, seed=1, num_predict=400)


def turn(text: str) -> str:
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
async def inst(gemma_path: Path) -> AsyncIterator[Instance]:
    instance = Instance("engine-test", LoadSpec(str(gemma_path), num_ctx=1024, num_parallel=4))
    await instance.start()
    yield instance
    await instance.stop()


async def test_load_reports_context_and_memory(inst: Instance) -> None:
    info = inst.info
    assert info is not None
    assert (info.context_length, info.num_parallel) == (1024, 4)
    m = info.memory
    assert 200e6 < m.weights_bytes < 300e6  # 253 MB file
    assert m.kv_cache_bytes > 0 and m.compute_bytes > 0 and m.gpu_bytes == 0 and m.devices == ()
    assert m.total_bytes == m.weights_bytes + m.kv_cache_bytes + m.compute_bytes
    assert info.load_duration_ns > 0


async def warm(inst: Instance, prompt: str) -> None:
    """Caches the prompt without generating."""
    r = await collect(inst.generate(GenerateSpec(prompt=prompt, params=SamplingParams(num_predict=0), add_bos=True)))
    assert r.last.done_reason == common_pb2.DONE_REASON_LENGTH
    assert r.last.stats is not None and r.last.stats.eval_count == 0 and not r.text


async def test_greedy_is_deterministic(inst: Instance) -> None:
    await warm(inst, PROMPT)
    first = await collect(inst.generate(GenerateSpec(prompt=PROMPT, params=GREEDY, add_bos=True)))
    second = await collect(inst.generate(GenerateSpec(prompt=PROMPT, params=GREEDY, add_bos=True)))
    assert first.text and first.text == second.text
    assert first.last.done and first.last.done_reason in (common_pb2.DONE_REASON_STOP, common_pb2.DONE_REASON_LENGTH)
    s1 = first.last.stats
    assert s1 is not None and s1.eval_count == len(first.token_ids) > 0
    assert s1.prompt_eval_duration_ns > 0 and s1.eval_duration_ns > 0


async def test_a_consumer_that_falls_behind_gets_merged_events(inst: Instance) -> None:
    spec = GenerateSpec(prompt=PROMPT, params=GREEDY, add_bos=True)
    await warm(inst, PROMPT)
    started = time.perf_counter()
    keeping_up = await collect(inst.generate(spec))
    took = time.perf_counter() - started
    stream = inst.generate(spec)
    time.sleep(3 * took + 0.5)  # noqa: ASYNC251 - on purpose: the consumer (the event loop) falls behind
    behind = await collect(stream)
    assert behind.token_ids == keeping_up.token_ids and behind.text == keeping_up.text
    assert len(behind.events) < len(keeping_up.events)  # what was pending came as one event
    assert behind.last.done and behind.last.stats is not None
    assert behind.last.stats.eval_count == len(behind.token_ids)


async def test_repeated_prompt_reuses_the_prefix(inst: Instance) -> None:
    prompt = turn("Which is the largest ocean on Earth, and how deep does it get?")
    a = await collect(inst.generate(GenerateSpec(prompt=prompt, params=GREEDY, add_bos=True)))
    b = await collect(inst.generate(GenerateSpec(prompt=prompt, params=GREEDY, add_bos=True)))
    sa, sb = a.last.stats, b.last.stats
    assert sa is not None and sb is not None
    n_prompt = sa.prompt_eval_count + sa.prompt_cached_count
    assert n_prompt == sb.prompt_eval_count + sb.prompt_cached_count
    assert sa.prompt_eval_count > 10  # at most "<bos><start_of_turn>user\n" was shared
    # The repeat only evaluates the last prompt token (needed for its logits).
    assert sb.prompt_eval_count == 1 and sb.prompt_cached_count == n_prompt - 1


async def test_prefix_reuse_of_a_shared_conversation(inst: Instance) -> None:
    history = turn("Tell me about lighthouses and the keepers who lived in them long ago.")
    a = await collect(inst.generate(GenerateSpec(prompt=history, params=GREEDY, add_bos=True)))
    follow_up = history + a.text + "<end_of_turn>\n" + turn("And today?")
    b = await collect(inst.generate(GenerateSpec(prompt=follow_up, params=GREEDY, add_bos=True)))
    sa, sb = a.last.stats, b.last.stats
    assert sa is not None and sb is not None
    # Only the new turn (plus the tokens around the previous answer's end) is evaluated.
    assert sb.prompt_cached_count >= sa.prompt_eval_count + sa.prompt_cached_count
    assert sb.prompt_eval_count < 20


async def test_seeded_sampling_repeats(inst: Instance) -> None:
    params = SamplingParams(temperature=0.8, seed=42, num_predict=24)
    prompt = turn("Name three colours.")
    await warm(inst, prompt)
    a = await collect(inst.generate(GenerateSpec(prompt=prompt, params=params, add_bos=True)))
    b = await collect(inst.generate(GenerateSpec(prompt=prompt, params=params, add_bos=True)))
    assert a.text and a.token_ids == b.token_ids


async def test_parallel_requests_all_complete_and_excess_waits(inst: Instance) -> None:
    seen = {"active": 0, "queued": 0}
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            seen["active"] = max(seen["active"], inst.active_sequences)
            seen["queued"] = max(seen["queued"], inst.queued_requests)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    topics = ["the sun", "the moon", "a cat", "a dog", "rain"]
    params = SamplingParams(num_predict=12, seed=3)
    results = await asyncio.gather(
        *(collect(inst.generate(GenerateSpec(prompt=turn(t), params=params))) for t in topics)
    )
    stop.set()
    await watcher
    for r in results:
        assert r.last.done and r.last.stats is not None and r.last.stats.eval_count > 0
    assert seen["active"] == 4  # all four slots decoded together
    assert seen["queued"] >= 1  # the fifth request waited for a slot


async def test_stop_string_cuts_the_output(inst: Instance) -> None:
    await warm(inst, PROMPT)
    full = (await collect(inst.generate(GenerateSpec(prompt=PROMPT, params=GREEDY, add_bos=True)))).text
    cut = len(full) // 2
    stop = full[cut : cut + 4]
    expected = full[: full.find(stop)]
    params = SamplingParams(temperature=0, num_predict=24, stop=(stop,))
    r = await collect(inst.generate(GenerateSpec(prompt=PROMPT, params=params, add_bos=True)))
    assert r.text == expected
    assert r.last.done_reason == common_pb2.DONE_REASON_STOP


async def test_num_predict_gives_length(inst: Instance) -> None:
    params = SamplingParams(temperature=0, num_predict=5)
    r = await collect(inst.generate(GenerateSpec(prompt=turn("Count to twenty."), params=params)))
    assert r.last.done_reason == common_pb2.DONE_REASON_LENGTH
    assert r.last.stats is not None and r.last.stats.eval_count == 5


async def test_full_context_gives_length(inst: Instance) -> None:
    prompt = (2,) + (9259,) * 1009  # 1010 tokens; 14 positions left of 1024
    r = await collect(inst.generate(GenerateSpec(prompt_tokens=prompt, params=NOISE)))
    assert r.last.done_reason == common_pb2.DONE_REASON_LENGTH
    assert r.last.stats is not None and r.last.stats.eval_count <= 1024 - 1010 + 1


async def test_prompt_too_long_is_refused(inst: Instance) -> None:
    with pytest.raises(CorralError) as exc:
        await collect(inst.generate(GenerateSpec(prompt_tokens=(9259,) * 1024)))
    assert exc.value.reason == common_pb2.ERROR_REASON_PROMPT_TOO_LONG
    assert exc.value.message.startswith("the prompt is longer than the context length")


async def test_cancel_frees_the_slot_for_the_next_request(inst: Instance) -> None:
    streams = [inst.generate(GenerateSpec(prompt=turn(f"Story number {i}."), params=NOISE)) for i in range(4)]
    for s in streams:  # every slot is now generating
        await s.__anext__()
    assert inst.active_sequences == 4
    streams[0].cancel()
    t0 = time.monotonic()
    quick = await collect(
        inst.generate(GenerateSpec(prompt=turn("Say hi."), params=SamplingParams(temperature=0, num_predict=3)))
    )
    elapsed = time.monotonic() - t0
    assert quick.last.done and quick.last.stats is not None and quick.last.stats.eval_count == 3
    assert elapsed < 10  # the others still have hundreds of tokens to go
    assert await eventually(lambda: inst.active_sequences == 3)
    for s in streams[1:]:
        s.cancel()
    assert await eventually(lambda: inst.active_sequences == 0)


async def test_grammar_constrains_the_output(inst: Instance) -> None:
    params = SamplingParams(temperature=0.8, seed=5, num_predict=8)
    r = await collect(
        inst.generate(GenerateSpec(prompt=turn("Yes or no?"), params=params, grammar='root ::= "yes" | "no"'))
    )
    assert r.text in ("yes", "no")


async def test_invalid_grammar_is_refused(inst: Instance) -> None:
    with pytest.raises(CorralError) as exc:
        await collect(inst.generate(GenerateSpec(prompt=turn("x"), grammar="root ::= (")))
    assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT


async def test_tokenize_detokenize_round_trip(inst: Instance) -> None:
    text = "Hello, world! Ünïcödé 🙂 — 日本語"
    tokens = await inst.call(lambda nm: nm.tokenize(text, False, False))
    assert tokens and await inst.call(lambda nm: nm.detokenize(tokens)) == text
    special = await inst.call(lambda nm: nm.tokenize("<start_of_turn>user", True, True))
    assert special[:2] == [2, 105]  # <bos>, <start_of_turn>
    assert await inst.call(lambda nm: nm.detokenize(special)) == "<bos><start_of_turn>user"


async def test_bad_files_fail_to_load_without_crashing(gemma_path: Path, tmp_path: Path) -> None:
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"not a model")
    truncated = tmp_path / "t.gguf"
    with gemma_path.open("rb") as f:
        truncated.write_bytes(f.read(1 << 20))
    for path, needle in [
        (tmp_path / "missing.gguf", "not found"),
        (not_gguf, "not a GGUF"),
        (truncated, "llama.cpp"),
    ]:
        with pytest.raises(CorralError) as exc:
            await Instance("bad", LoadSpec(str(path), num_ctx=512)).start()
        assert exc.value.reason == common_pb2.ERROR_REASON_LOAD_FAILED
        assert needle in exc.value.message


async def test_stopped_instance_refuses_work(gemma_path: Path) -> None:
    instance = Instance("short-lived", LoadSpec(str(gemma_path), num_ctx=512))
    await instance.start()
    await instance.stop()
    with pytest.raises(CorralError) as exc:
        await collect(instance.generate(GenerateSpec(prompt="hi")))
    assert exc.value.reason == common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND
