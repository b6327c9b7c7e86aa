#!/usr/bin/env python3
"""Speculative decoding (prompt lookup) on an edit workload: single-stream decode with and without it.

    PYTHONPATH=$PWD .venv/bin/python bench/speculative.py [--rounds 3] [--tokens 256]

The request asks Gemma 3 270M to rewrite a piece of code with one change, so most of the
answer repeats the prompt: the case prompt-lookup drafting is for. Corral REST, greedy,
one stream; each round runs the task with `speculative: false` and with `true`, alternating
which goes first, and reports whether both texts are identical (they are, token for token,
with --batch-invariant; docs/runner.md). Reports
decode tok/s (first to last token) per round and the median ratio. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runner import NUM_CTX, Corral
from tests.assets import gemma_path
from tests.stack import create_model, start_stack, stop_stack

CODE = """def load_users(path):
    users = []
    with open(path) as f:
        for line in f:
            name, email, age = line.strip().split(",")
            users.append({"name": name, "email": email, "age": int(age)})
    return users


def adults(users):
    return [u for u in users if u["age"] >= 18]


def emails(users):
    return sorted(u["email"] for u in users)


def report(path):
    users = load_users(path)
    grown = adults(users)
    print(f"{len(grown)} of {len(users)} users are adults")
    for email in emails(grown):
        print(email)
"""

TASKS = [
    "Rewrite this Python code, renaming the function adults to grown_ups everywhere. Output the whole code.",
    "Rewrite this Python code so that load_users skips empty lines. Output the whole code.",
    "Rewrite this Python code, adding a docstring to report. Output the whole code.",
]


def prompt(task: str) -> str:
    return f"<start_of_turn>user\n{task}\n\n```python\n{CODE}```<end_of_turn>\n<start_of_turn>model\n"


async def run(corral: Corral, rounds: int, tokens: int) -> None:
    rates: dict[bool, list[float]] = {False: [], True: []}
    identical: list[bool] = []
    async with httpx.AsyncClient(timeout=900) as client:
        await corral.generate(client, "Hello", 4)  # load
        for r in range(rounds):
            task = prompt(TASKS[r % len(TASKS)])
            texts: dict[bool, str] = {}
            for on in (False, True) if r % 2 == 0 else (True, False):
                tr = await corral.generate(client, task, tokens, speculative=on)
                rates[on].append(tr.decode_rate)
                texts[on] = tr.text
                print(f"round {r + 1} speculative={on!s:5s} {tr.tokens} tokens {tr.decode_rate:6.1f} tok/s", flush=True)
            same = texts[True] == texts[False]
            identical.append(same)
            if not same:
                k = (
                    next(i for i, (a, b) in enumerate(zip(texts[True], texts[False], strict=False)) if a != b)
                    if texts[True] and texts[False]
                    else 0
                )
                print(f"round {r + 1}: texts differ from character {k}", flush=True)
    ratios = [a / b for a, b in zip(rates[True], rates[False], strict=True)]
    print(
        f"\nwithout: {statistics.median(rates[False]):.1f} tok/s  with: {statistics.median(rates[True]):.1f} tok/s  "
        f"ratio per round {', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f}); "
        f"identical text in {sum(identical)} of {len(identical)} rounds"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--flash-attention", choices=("0", "1"), default="0")
    parser.add_argument("--batch-invariant", action="store_true", help="CORRAL_BATCH_INVARIANT=1 (docs/runner.md)")
    args = parser.parse_args()
    model = args.model or gemma_path()
    print(f"model {model.name}  threads {args.threads}  num_ctx {NUM_CTX}  greedy, single stream")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CORRAL_NUM_PARALLEL": "1", "CORRAL_FLASH_ATTENTION": args.flash_attention}
        if args.batch_invariant:
            env["CORRAL_BATCH_INVARIANT"] = "1"
        stack = start_stack(Path(tmp), **env)
        try:
            create_model(stack.url, "bench", model)
            asyncio.run(run(Corral(stack.url, args.threads), args.rounds, args.tokens))
        finally:
            stop_stack(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
