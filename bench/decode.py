#!/usr/bin/env python3
"""Decode speed through Corral's REST streaming vs direct llama-cpp-python, same model, same run.

    .venv/bin/python bench/decode.py [--model PATH] [--tokens 128] [--rounds 3] [--threads N]

Starts `corral serve` on a free port with a temporary models directory, creates the model
from the GGUF, then alternates rounds: direct `Llama` greedy decode, and a streamed
`/api/generate` with the same prompt, thread count, context and `num_predict`. Decode speed
is measured from the first to the last token on both sides (prompt evaluation excluded), and
the ratio REST/direct is printed (target ≥ 0.97). Threads, context, batch size, flash attention
(off) and the sliding-window cache mode are pinned to the same values on both sides.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.assets import gemma_path
from tests.stack import create_model, start_stack, stop_stack

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
NUM_CTX = 1024


def direct(model: Path, tokens: int, threads: int, rounds: int) -> list[float]:
    from llama_cpp import Llama

    llm = Llama(
        str(model),
        n_ctx=NUM_CTX,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=512,
        flash_attn=False,  # pinned: the stack runs with CORRAL_FLASH_ATTENTION=0
        swa_full=False,  # as the runner (and llama-server) configure it
        verbose=False,
    )
    speeds = []
    for _ in range(rounds):
        llm.reset()
        stamps = []
        for _chunk in llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True):
            stamps.append(time.perf_counter())
        speeds.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    del llm
    return speeds


def rest(url: str, model: str, tokens: int, threads: int, rounds: int) -> tuple[list[float], list[float]]:
    body = {
        "model": model,
        "prompt": PROMPT,
        "raw": True,
        "options": {"temperature": 0, "num_predict": tokens, "num_ctx": NUM_CTX, "num_thread": threads},
    }
    wall, reported = [], []
    with httpx.Client(timeout=600) as client:
        client.post(url + "/api/generate", json={**body, "options": {**body["options"], "num_predict": 1}})  # load
        for _ in range(rounds):
            stamps = []
            final: dict[str, int] = {}
            with client.stream("POST", url + "/api/generate", json=body) as resp:
                for line in resp.iter_lines():
                    if not line:
                        continue
                    stamps.append(time.perf_counter())
                    if '"done":true' in line:
                        final = httpx.Response(200, content=line).json()
            # The final chunk carries no token; count the token chunks only.
            token_stamps = stamps[:-1]
            wall.append((len(token_stamps) - 1) / (token_stamps[-1] - token_stamps[0]))
            reported.append(final["eval_count"] / (final["eval_duration"] / 1e9))
    return wall, reported


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the Gemma 3 270M test model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    args = parser.parse_args()
    model = args.model or gemma_path()

    with tempfile.TemporaryDirectory() as tmp:
        stack = start_stack(Path(tmp), CORRAL_FLASH_ATTENTION="0")
        try:
            create_model(stack.url, "bench", model)
            rest_wall, rest_reported, direct_speeds = [], [], []
            for _ in range(args.rounds):
                direct_speeds += direct(model, args.tokens, args.threads, 1)
                w, r = rest(stack.url, "bench", args.tokens, args.threads, 1)
                rest_wall += w
                rest_reported += r
        finally:
            stop_stack(stack)

    d, w, r = (statistics.median(x) for x in (direct_speeds, rest_wall, rest_reported))
    print(f"model            {model.name}")
    print(f"threads          {args.threads}   tokens {args.tokens}   rounds {args.rounds}   num_ctx {NUM_CTX}")
    print(f"direct           {d:8.2f} tok/s   (llama-cpp-python create_completion, streamed)")
    print(f"REST streaming   {w:8.2f} tok/s   (client-side, first to last NDJSON token line)")
    print(f"REST reported    {r:8.2f} tok/s   (eval_count / eval_duration of the final chunk)")
    print(f"ratio REST/direct {w / d:7.3f}   (target >= 0.97)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
