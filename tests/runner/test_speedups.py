"""Prefix sharing, the host prompt cache and speculative decoding keep the output exact
(real llama.cpp, the real Gemma 3 270M), token for token, under batch-invariant kernels
(tests/conftest.py turns off the tiled matmul; instances load with flash attention over a
q8_0 KV cache, as CORRAL_BATCH_INVARIANT=1 does)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner import batcher
from services.runner.engine import Instance
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec, NativeModel
from services.runner.promptcache import PromptCache
from services.runner.sampling import SamplingParams
from services.runner.speculate import StepCosts
from tests.ggufs import write_tiny_gguf
from tests.runner.conftest import Result, collect

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the old river bank.",
    "Seven small ships sailed south past the silent stone lighthouse.",
    "My grandmother keeps her recipes in a blue tin box on the top shelf.",
    "The train to Edinburgh leaves platform four at half past nine every morning.",
    "Bright yellow tulips grow along the fence behind the village school.",
    "Our team finished the marathon in under four hours despite the heavy rain.",
    "The library opens at eight and closes at six on weekdays.",
    "A red kite circled high above the green hills before the storm.",
    "Please remember to water the tomato plants twice a day in summer.",
    "The museum's new exhibit shows ancient coins from the Roman empire.",
    "He parked the silver car beside the bakery on Maple Street.",
    "Fresh bread and warm soup were served to every guest at the inn.",
    "The concert was cancelled because the lead singer lost her voice.",
    "Students must hand in their science projects before the end of May.",
    "The cat slept all afternoon on the warm windowsill in the kitchen.",
    "Mountain climbers reached the summit just as the sun began to rise.",
    "The company moved its headquarters from Boston to Denver last year.",
    "Heavy snow closed the mountain pass for three days in January.",
    "She painted the wooden door a deep shade of forest green.",
    "The children built a sandcastle with four towers and a moat.",
]


def turn(text: str) -> str:
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


def greedy(prompt: str, n: int, speculative: bool | None = True) -> GenerateSpec:
    params = SamplingParams(temperature=0, num_predict=n, speculative=speculative)
    return GenerateSpec(prompt=prompt, add_bos=True, params=params)


def invariant(gemma_path: Path, num_parallel: int, num_ctx: int = 1024) -> LoadSpec:
    return LoadSpec(
        str(gemma_path), num_ctx=num_ctx, num_parallel=num_parallel, flash_attention=True, kv_cache_type="q8_0"
    )


@pytest.fixture(scope="module")
async def inst(gemma_path: Path) -> AsyncIterator[Instance]:
    instance = Instance("speedups", invariant(gemma_path, 4))
    await instance.start()
    assert instance.batcher is not None and instance.batcher.nm.batch_invariant
    yield instance
    await instance.stop()


async def run_all(inst: Instance, specs: list[GenerateSpec]) -> list[Result]:
    """Runs the requests concurrently (they share the batch)."""
    return list(await asyncio.gather(*(collect(inst.generate(s)) for s in specs)))


class FixedCosts(StepCosts):
    """Step costs set by the test, not learned."""

    def __init__(self, seconds: dict[int, float]) -> None:
        super().__init__()
        self.seconds = seconds

    def observe(self, rows: int, seconds: float) -> None:
        pass


@contextlib.asynccontextmanager
async def step_costs(inst: Instance, seconds_per_extra_row: float) -> AsyncIterator[None]:
    """The batcher weighs drafts against these step costs (a row: 10 ms, each one more: as given)."""
    b = inst.batcher
    assert b is not None
    learned = b.step_costs
    costs = FixedCosts({n: 0.010 + seconds_per_extra_row * (n - 1) for n in range(1, 64)})
    await inst.call(lambda _nm: setattr(b, "step_costs", costs))
    try:
        yield
    finally:
        await inst.call(lambda _nm: setattr(b, "step_costs", learned))


async def test_speculative_output_equals_plain_greedy_on_20_prompts(inst: Instance) -> None:
    prompts = [turn(f"Repeat this sentence twice, word for word:\n{s}") for s in SENTENCES]
    assert inst.batcher is not None
    accepted, drafted_before = inst.batcher.draft_accepted, inst.batcher.drafted
    plain = [await collect(inst.generate(greedy(p, 24, speculative=False))) for p in prompts]
    # Drafted: concurrently too, so verification rows share batches with other sequences.
    # Extra rows nearly free, so no draft is cut for its cost (as on a GPU).
    async with step_costs(inst, 0.0001):
        drafted = await run_all(inst, [greedy(p, 24, speculative=None) for p in prompts[:10]])  # on by default here
        drafted += [await collect(inst.generate(greedy(p, 24))) for p in prompts[10:]]
    for p, s in zip(plain, drafted, strict=True):
        assert s.token_ids == p.token_ids and s.text == p.text
        assert s.last.stats is not None and s.last.stats.eval_count == len(s.token_ids) == 24
    kept = inst.batcher.draft_accepted - accepted
    assert kept > 100  # drafts were really verified and kept
    assert inst.batcher.drafted - drafted_before > kept  # and some were rejected (the KV rolled back)


async def test_drafts_are_cut_to_what_their_rows_are_worth(inst: Instance) -> None:
    """Where a drafted row costs as much as a step of its own, nothing is drafted; where
    rows are nearly free, drafts are verified. The text is the same either way."""
    b = inst.batcher
    assert b is not None
    spec = greedy(turn(f"Repeat this sentence twice, word for word:\n{SENTENCES[3]}"), 32)
    texts = []
    for per_extra_row, drafts in ((0.010, False), (0.0001, True)):
        async with step_costs(inst, per_extra_row):
            before = b.drafted
            texts.append((await collect(inst.generate(spec))).token_ids)
            assert (b.drafted > before) == drafts
    assert texts[0] == texts[1]


async def test_speculation_stays_off_by_default_without_invariant_kernels(gemma_path: Path) -> None:
    plain = Instance("plain", LoadSpec(str(gemma_path), num_ctx=512, num_parallel=1))
    await plain.start()
    try:
        assert plain.batcher is not None and not plain.batcher.nm.batch_invariant
        await collect(plain.generate(greedy(turn("Repeat twice: the cat sat on the mat."), 16, speculative=None)))
        assert plain.batcher.drafted == 0
    finally:
        await plain.stop()


SYSTEM = turn(
    "You are a helpful assistant for a travel company. "
    + " ".join(f"Rule {i}: always answer politely and briefly, in one short sentence." for i in range(40))
    + "\nQuestion: "
)
QUESTIONS = ["What is the capital of France?", "What is the capital of Japan?", "What is 2 + 2?", "Name a color."]


async def test_shared_prefix_sequences_give_the_unshared_greedy_text(inst: Instance, gemma_path: Path) -> None:
    prompts = [SYSTEM + q + "<end_of_turn>\n<start_of_turn>model\n" for q in QUESTIONS]
    assert inst.batcher is not None
    shared = inst.batcher.shared_tokens
    # The four arrive together: the owner thread is held while they queue, so one admission
    # sees them all (else how many share depends on how the machine's load spaces them).
    held = asyncio.ensure_future(inst.call(lambda _nm: time.sleep(0.5)))
    await asyncio.sleep(0)
    together = await run_all(inst, [greedy(p, 8, speculative=False) for p in prompts])
    await held
    n_system = len(inst.batcher.nm.tokenize(SYSTEM, add_special=True, parse_special=True))
    assert n_system > 600  # longer than Gemma's 512-token window
    # Copied, not evaluated: each of the three followers copies from the one sequence that
    # evaluates the prefix, never from another follower (whose copied window may already be
    # past the shorter prefix it needs).
    assert inst.batcher.shared_tokens - shared >= 3 * (n_system - 16)
    assert sum(r.last.stats.prompt_cached_count for r in together if r.last.stats) >= 3 * (n_system - 16)
    alone = Instance("alone", invariant(gemma_path, 1))
    await alone.start()
    try:
        for prompt, r in zip(prompts, together, strict=True):
            await collect(alone.generate(greedy(turn("Say hi."), 0)))  # the slot holds nothing to reuse
            ref = await collect(alone.generate(greedy(prompt, 8, speculative=False)))
            assert ref.last.stats is not None and ref.last.stats.prompt_cached_count < 8  # the chat-turn header only
            assert r.token_ids == ref.token_ids and r.text == ref.text
    finally:
        await alone.stop()


async def test_the_prompt_cache_serves_its_load_only(gemma_path: Path) -> None:
    cache = PromptCache(256 << 20)
    spec = invariant(gemma_path, 1)
    story = turn("Tell me a story about " + ", ".join(SENTENCES[:4]))
    first = Instance("cached", spec, cache)
    await first.start()
    try:
        a = await collect(first.generate(greedy(story, 12)))
        await collect(first.generate(greedy(turn("Say hi."), 4)))  # the slot moves on; the story goes to the cache
        assert len(cache) >= 1
        b = await collect(first.generate(greedy(story, 12)))
        assert b.last.stats is not None and b.last.stats.prompt_cached_count > 50  # restored from the cache
        assert b.text == a.text
        hits = cache.hits
    finally:
        await first.stop()
    assert len(cache) == 0  # the unload dropped its snapshots
    again = Instance("cached", spec, cache)  # same id, a new load
    await again.start()
    try:
        c = await collect(again.generate(greedy(story, 12)))
        assert c.last.stats is not None and c.last.stats.prompt_cached_count == 0
        assert cache.hits == hits
        assert c.text == a.text
    finally:
        await again.stop()


async def test_idle_slots_move_to_the_host_cache(gemma_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a unified KV cache (the default kernels) KV that finished requests leave behind
    widens every later step's attention: once there is enough of it, a starting sequence
    parks the idle slots in the host cache, and a request that extends a parked prompt gets
    it back from there."""
    cache = PromptCache(256 << 20)
    inst = Instance("parking", LoadSpec(str(gemma_path), num_ctx=512, num_parallel=4), cache)
    await inst.start()
    try:
        b = inst.batcher
        assert b is not None and not b.nm.batch_invariant
        prompts = [turn(f"Repeat this sentence twice, word for word:\n{s} {s}") for s in SENTENCES[:3]]
        firsts = await run_all(inst, [greedy(p, 8, speculative=False) for p in prompts])
        await collect(inst.generate(greedy(turn("Say hi."), 2)))
        assert len([s for s in b.slots if s.cached]) == 4 and len(cache) == 0  # too few cells to bother
        monkeypatch.setattr(batcher, "PARK_MIN_CELLS", 32)
        await collect(inst.generate(greedy(turn("Say hello."), 2)))
        assert len([s for s in b.slots if s.cached]) == 1  # the slot that served it
        assert all(b.nm.seq_pos_min(s.id) == -1 for s in b.slots if not s.cached)  # the rest: out of the KV
        assert len(cache) == 3  # every repeated sentence, in the host cache ("Say hi." is too short)
        again = await collect(inst.generate(greedy(prompts[1], 8, speculative=False)))
        assert again.last.stats is not None and again.last.stats.prompt_cached_count > 32  # from the cache
        assert again.token_ids == firsts[1].token_ids
    finally:
        await inst.stop()


async def test_draft_model_output_equals_plain_greedy(gemma_path: Path) -> None:
    """A draft model (here the model itself, so it drafts what the model picks) proposes the
    tokens; speculation is on by default with it, and the output is plain greedy decoding's."""
    spec = replace(invariant(gemma_path, 2), draft_model_path=str(gemma_path), draft_num_predict=6)
    inst = Instance("drafted", spec)
    await inst.start()
    try:
        batcher = inst.batcher
        assert batcher is not None and batcher.drafter is not None
        both = batcher.nm.memory.weights_bytes + batcher.drafter.nm.memory.weights_bytes
        assert inst.info is not None and inst.info.memory.weights_bytes == both > batcher.nm.memory.weights_bytes
        prompts = [turn(f"Write one sentence about {s.lower()}") for s in SENTENCES[:6]]
        plain = [await collect(inst.generate(greedy(p, 24, speculative=False))) for p in prompts]
        assert batcher.drafted == 0
        async with step_costs(inst, 0.0001):  # no draft cut for its rows' cost
            drafted = await run_all(inst, [greedy(p, 24, speculative=None) for p in prompts[:2]])
            drafted += [await collect(inst.generate(greedy(p, 24, speculative=None))) for p in prompts[2:]]
        for p, d in zip(plain, drafted, strict=True):
            assert d.token_ids == p.token_ids and d.text == p.text
        assert batcher.drafted > 50 and batcher.draft_accepted >= 0.9 * batcher.drafted
        assert batcher.drafter.shared_decodes > 0  # the concurrent pair drafted in shared batches
        await proposals_together_equal_proposals_alone(inst, [turn(s) for s in SENTENCES[6:8]])
    finally:
        await inst.stop()


async def proposals_together_equal_proposals_alone(inst: Instance, prompts: list[str]) -> None:
    """The draft model proposes for two sequences in shared batches (catch-up, then each
    round) exactly what it proposes for each alone (batch-invariant kernels)."""
    drafter = inst.batcher.drafter if inst.batcher is not None else None
    assert drafter is not None

    def run(nm: NativeModel) -> tuple[dict[int, list[int]], dict[int, list[int]], int]:
        histories = {i: nm.tokenize(p, True, True) for i, p in enumerate(prompts)}
        for i in histories:  # start both from an empty draft KV
            drafter.nm.seq_rm(i)
            drafter.cached[i].clear()
        shared = drafter.shared_decodes
        together = drafter.propose_many({i: (h, 6) for i, h in histories.items()})
        shared = drafter.shared_decodes - shared
        for i in histories:
            drafter.nm.seq_rm(i)
            drafter.cached[i].clear()
        alone = {i: drafter.propose_many({i: (h, 6)})[i] for i, h in histories.items()}
        return together, alone, shared

    together, alone, shared = await inst.call(run)
    assert together == alone and all(together.values())
    assert shared >= 2  # the catch-up and at least one drafted round went as one batch

    def long_history(nm: NativeModel) -> tuple[int, list[int], list[int]]:
        """A catch-up longer than a batch goes in batch-sized chunks; drafting again after it
        (only the last token left to evaluate) proposes the same."""
        history = nm.tokenize(" ".join(SENTENCES) * 3, True, True)
        drafter.nm.seq_rm(0)
        drafter.cached[0].clear()
        fresh = drafter.propose_many({0: (history, 6)})[0]
        again = drafter.propose_many({0: (history, 6)})[0]
        return len(history), fresh, again

    n, fresh, again = await inst.call(long_history)
    assert drafter.nm.n_batch < n < drafter.nm.num_ctx - 6
    assert fresh and fresh == again


async def test_a_draft_model_with_another_vocabulary_is_refused(gemma_path: Path, tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", n_embd=128, n_ff=256)  # q8_0 KV needs 32-wide heads
    inst = Instance("mismatch", replace(invariant(gemma_path, 1), draft_model_path=str(tiny.path)))
    with pytest.raises(CorralError) as err:
        await inst.start()
    assert err.value.reason == common_pb2.ERROR_REASON_LOAD_FAILED
    assert "vocabulary differs" in err.value.message
