#!/usr/bin/env python3
"""Prompt-lookup drafting policies replayed over recorded greedy answers, with measured step costs.

    PYTHONPATH=$PWD .venv/bin/python bench/draft_policy.py [--tokens 60,200,300] [--sizes 8,6,4 3,2]

Records Gemma 3 270M's greedy answers (batch-invariant kernels, as speculation runs by
default) to bench/speculative.py's edit tasks and to free-text openings, times a decode
step of 1 to 17 rows (one sequence, median of 3), then replays every answer through the
runner's own drafting policy (`NgramIndex` with the given n-gram sizes, `DraftLength`,
`StepCosts`) for each `--sizes`: a draft is accepted as far as it matches the recorded
answer, a step costs its measured time. Prints the estimated speedup over plain decoding
(single row steps) per workload and answer length. Deterministic for a given recording,
so policies are compared without run-to-run noise; bench/speculative.py measures the real
thing. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.speculative import TASKS, prompt
from services.runner.engine import Instance
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec, NativeModel, use_batch_invariant_kernels
from services.runner.sampling import SamplingParams
from services.runner.speculate import MAX_DRAFT, DraftLength, NgramIndex, StepCosts
from tests.assets import gemma_path
from tests.runner.conftest import collect

FREE = [
    "Once upon a time, in a small village by the sea,",
    "The history of the bicycle begins in",
    "Chapter 1\n\nThe rain had not stopped for three days when",
    "Dear diary, today I",
]
Answer = tuple[list[int], list[int]]  # prompt tokens, greedy answer tokens


def load_spec(model: Path) -> LoadSpec:
    return LoadSpec(str(model), num_ctx=2048, num_parallel=1, num_thread=2, flash_attention=True, kv_cache_type="q8_0")


def tokens_of(text: str, nm: NativeModel) -> list[int]:
    return nm.tokenize(text, True, True)


async def record(model: Path, prompts: list[str], tokens: int) -> list[Answer]:
    inst = Instance("draft-policy", load_spec(model))
    await inst.start()
    try:
        out = []
        for p in prompts:
            toks = await inst.call(functools.partial(tokens_of, p))
            params = SamplingParams(temperature=0, num_predict=tokens, speculative=False)
            answer = await collect(inst.generate(GenerateSpec(prompt=p, params=params, add_bos=True)))
            out.append((toks, answer.token_ids))
        return out
    finally:
        await inst.stop()


def step_seconds(model: Path) -> dict[int, float]:
    """Median seconds of a decode step of n rows of one sequence after a 150-token prompt."""
    nm = NativeModel(load_spec(model))
    try:
        toks = nm.tokenize(prompt(TASKS[0]), True, True)[:150]
        for i, t in enumerate(toks):
            nm.batch_add(i, t, i, 0, i == len(toks) - 1)
        nm.decode(len(toks))
        times: dict[int, list[float]] = {}
        for _ in range(3):
            for n in range(1, MAX_DRAFT + 2):
                for i in range(n):
                    nm.batch_add(i, 100 + i, len(toks) + i, 0, True)
                t0 = time.perf_counter()
                nm.decode(n)
                times.setdefault(n, []).append(time.perf_counter() - t0)
                nm.seq_rm(0, len(toks), -1)
        return {n: statistics.median(v) for n, v in times.items()}
    finally:
        nm.free()


def replay(answers: list[Answer], seconds: dict[int, float], sizes: tuple[int, ...], n: int) -> float:
    """Plain decoding time over speculative decoding time for the first n tokens of each answer."""
    plain = spec = 0.0
    for prompt_toks, answer in answers:
        out = answer[:n]
        index, length, costs = NgramIndex(sizes), DraftLength(), StepCosts()
        for rows, s in seconds.items():
            costs.observe(rows, s)
        index.extend([*prompt_toks, out[0]])
        i = 0  # out[i] is the pending token, decoded with the draft after it
        while i < len(out) - 1:
            k = min(length.next_k(), len(out) - i - 1)
            draft = index.draft(k)
            draft = draft[: length.worth(costs, 1, len(draft))]
            accepted = 0
            while accepted < len(draft) and draft[accepted] == out[i + 1 + accepted]:
                accepted += 1
            if draft:
                length.update(len(draft), accepted)
            spec += seconds[1 + len(draft)]
            index.extend(out[i + 1 : i + 2 + accepted])
            i += accepted + 1
        plain += seconds[1] * (len(out) - 1)
    return plain / spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", default="60,200,300", help="answer lengths to replay")
    parser.add_argument("--sizes", nargs="+", default=["8,6,4", "4", "3,2"], help="n-gram sizes, longest first")
    args = parser.parse_args()
    use_batch_invariant_kernels()
    model = args.model or gemma_path()
    lengths = [int(x) for x in args.tokens.split(",")]
    workloads = {
        "edit": asyncio.run(record(model, [prompt(t) for t in TASKS], max(lengths))),
        "free": asyncio.run(record(model, FREE, max(lengths))),
    }
    seconds = step_seconds(model)
    print("step ms by rows:", {n: round(s * 1e3, 1) for n, s in seconds.items()})
    for name, answers in workloads.items():
        for n in lengths:
            ratios = [f"{s}: {replay(answers, seconds, tuple(map(int, s.split(','))), n):.2f}" for s in args.sizes]
            print(f"{name:5s} {n:4d} tokens  " + "  ".join(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
