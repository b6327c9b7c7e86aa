#!/usr/bin/env python3
"""Shared system prompt: 8 clients, each with the same ~1,000-token system prompt and its own question.

    PYTHONPATH=$PWD .venv/bin/python bench/prefix.py [--rounds 3] [--tokens 48] [--skip-llama-server]

Corral REST (CORRAL_NUM_PARALLEL=8) next to `llama-server -np 8 -kvu` (its defaults:
`--cache-prompt`, `--cache-ram`), same model, threads, context, FA off, KV f16, greedy.
Each round sends the 8 requests at once to one system and then to the other (interleaved,
so load from other users of the machine hits both alike); every round uses fresh questions
and a fresh system prompt (a round number in it), so neither system reuses the previous
round. Reports per round and as medians: median TTFT of the 8 requests, aggregate decode
tok/s (tokens of all 8 over the wall time from first to last token) and the ratios
Corral / llama-server. Not a test: nothing is asserted.
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

from bench import llama_server
from bench.runner import NUM_CTX, PARALLEL, Corral, LlamaServer, System, Trace
from tests.assets import gemma_path
from tests.stack import create_model, free_port, start_stack, stop_stack

QUESTIONS = [
    "How do I change my flight date?",
    "Can I bring my dog on the plane?",
    "What is the baggage allowance for economy?",
    "How early should I arrive at the airport?",
    "Can I get a refund if I cancel?",
    "Do you offer vegetarian meals?",
    "How do I add a hotel to my booking?",
    "What happens if my flight is delayed?",
]


def system_prompt(round_no: int) -> str:
    rules = " ".join(
        f"Policy {i}: agents answer questions about bookings, baggage, refunds and travel documents "
        f"clearly, politely and in at most three sentences, and never invent prices (section {i})."
        for i in range(26)
    )
    return f"<start_of_turn>user\nYou are the assistant of Corral Travel, desk {round_no}. {rules}\n\nQuestion: "


def prompt(round_no: int, i: int) -> str:
    return system_prompt(round_no) + QUESTIONS[i] + f" (ticket {round_no}-{i})<end_of_turn>\n<start_of_turn>model\n"


async def burst(sys_: System, client: httpx.AsyncClient, round_no: int, tokens: int) -> tuple[float, float]:
    """(median TTFT s, aggregate decode tok/s) of 8 simultaneous requests."""
    traces: list[Trace] = await asyncio.gather(
        *(sys_.generate(client, prompt(round_no, i), tokens) for i in range(PARALLEL))
    )
    first = min(t.stamps[0] for t in traces if t.stamps)
    last = max(t.stamps[-1] for t in traces if t.stamps)
    decoded = sum(max(0, t.tokens - 1) for t in traces)
    return statistics.median(t.ttft for t in traces), decoded / max(1e-9, last - first)


async def run(systems: list[System], rounds: int, tokens: int, llama_url: str | None) -> None:
    if llama_url:
        async with httpx.AsyncClient() as c:
            n = len((await c.post(llama_url + "/tokenize", json={"content": system_prompt(0)})).json()["tokens"])
        print(f"system prompt: {n} tokens")
    res: dict[str, list[tuple[float, float]]] = {s.name: [] for s in systems}
    async with httpx.AsyncClient(timeout=900) as client:
        for s in systems:  # load and warm up
            await s.generate(client, "Hello", 4)
        for r in range(1, rounds + 1):
            order = systems if r % 2 else systems[::-1]
            for s in order:
                res[s.name].append(await burst(s, client, r, tokens))
                ttft, agg = res[s.name][-1]
                print(f"round {r} {s.name:12s} median TTFT {ttft * 1e3:7.0f} ms  decode {agg:6.1f} tok/s", flush=True)
    names = [s.name for s in systems]
    print("\n| metric | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print(
        "| median TTFT, 8 streams (ms) | "
        + " | ".join(f"{statistics.median(t for t, _ in res[x]) * 1e3:.0f}" for x in names)
        + " |"
    )
    print(
        "| aggregate decode, 8 streams (tok/s) | "
        + " | ".join(f"{statistics.median(a for _, a in res[x]):.1f}" for x in names)
        + " |"
    )
    if len(names) == 2:
        a, b = res[names[0]], res[names[1]]
        ttft = [x[0] / y[0] for x, y in zip(a, b, strict=True)]
        agg = [x[1] / y[1] for x, y in zip(a, b, strict=True)]
        for label, vals in (("TTFT", ttft), ("decode", agg)):
            each = ", ".join(f"{v:.2f}" for v in vals)
            print(f"per-round {label} ratio Corral/llama-server: {each} (median {statistics.median(vals):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--skip-llama-server", action="store_true")
    args = parser.parse_args()
    model = args.model or gemma_path()
    print(f"model {model.name}  threads {args.threads}  num_ctx {NUM_CTX}/seq  slots {PARALLEL}  FA off  KV f16")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CORRAL_NUM_PARALLEL": str(PARALLEL), "CORRAL_FLASH_ATTENTION": "0", "CORRAL_KV_CACHE_TYPE": "f16"}
        stack = start_stack(Path(tmp), **env)
        try:
            create_model(stack.url, "bench", model)
            systems: list[System] = [Corral(stack.url, args.threads)]
            if args.skip_llama_server:
                asyncio.run(run(systems, args.rounds, args.tokens, None))
                return 0
            log = Path(tmp) / "llama-server.log"
            kw = {"threads": args.threads, "num_ctx": NUM_CTX, "parallel": PARALLEL, "flash_attn": False}
            with llama_server.serve(model, port=free_port(), log=log, **kw) as url:  # type: ignore[arg-type]
                systems.append(LlamaServer(url))
                asyncio.run(run(systems, args.rounds, args.tokens, url))
        finally:
            stop_stack(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
