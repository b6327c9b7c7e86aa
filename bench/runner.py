#!/usr/bin/env python3
"""Corral's REST API vs llama.cpp's `llama-server -np 8`, same model, threads, context, FA and KV type.

    .venv/bin/python bench/runner.py [--levels 1,4,8,16] [--tokens 64] [--threads N] [--skip-llama-server]

Measures, alternating the two systems level by level so that load from other users of
the machine hits both alike:
  (b) aggregate decode tok/s at 1/4/8/16 concurrent streams (8 slots on both; 16 queues half),
  (c) median time to first token at each level,
  (d) JSON-schema constrained decode vs unconstrained decode (single stream),
  (e) p95 inter-token gap of 4 running streams while a 1,500-token prompt is admitted,
  (f) median time to first token of a 1,500-token prompt with nothing else running (each
      round's prompt starts differently, so no prompt cache serves it).
(a) single-stream REST vs direct llama-cpp-python is bench/decode.py. Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import llama_server
from tests.assets import gemma_path
from tests.stack import create_model, free_port, start_stack, stop_stack

T = TypeVar("T")
NAN = float("nan")
NUM_CTX = 2048  # per sequence, both systems
PARALLEL = 8
TOPICS = ["a lighthouse", "a dragon", "the sea", "a robot", "a city", "a forest", "a ship", "a castle"]
SCHEMA = {
    "type": "object",
    "properties": {"animals": {"type": "array", "items": {"type": "string"}, "minItems": 40}},
    "required": ["animals"],
}


@dataclass
class Trace:
    t_send: float
    stamps: list[float] = field(default_factory=list)
    tokens: int = 0
    text: str = ""

    @property
    def ttft(self) -> float:
        return self.stamps[0] - self.t_send if self.stamps else float("nan")

    @property
    def decode_rate(self) -> float:
        """Tokens after the first over the time from the first chunk to the last. Counted from
        the final count when there is one: a chunk may carry several tokens (a speculative
        step's, or those a consumer that fell behind gets merged)."""
        if len(self.stamps) < 2:
            return float("nan")
        return ((self.tokens or len(self.stamps)) - 1) / (self.stamps[-1] - self.stamps[0])


class System:
    name = ""

    async def generate(self, client: httpx.AsyncClient, prompt: str, n: int, **extra: Any) -> Trace:
        raise NotImplementedError


class Corral(System):
    name = "Corral REST"

    def __init__(self, url: str, threads: int) -> None:
        self.url, self.threads = url, threads

    async def generate(self, client: httpx.AsyncClient, prompt: str, n: int, **extra: Any) -> Trace:
        opts = {"num_predict": n, "num_ctx": NUM_CTX, "num_thread": self.threads, "temperature": 0}
        opts |= {k: v for k, v in extra.items() if k in ("temperature", "seed", "speculative")}
        body: dict[str, Any] = {"model": "bench", "prompt": prompt, "raw": True, "options": opts}
        if "schema" in extra:
            body["format"] = extra["schema"]
        tr = Trace(time.perf_counter())
        async with client.stream("POST", self.url + "/api/generate", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line:
                    continue
                msg = json.loads(line)
                if msg.get("response"):
                    tr.stamps.append(time.perf_counter())
                    tr.text += msg["response"]
                if msg.get("done"):
                    tr.tokens = int(msg.get("eval_count", 0))
                if "error" in msg:
                    raise RuntimeError(msg["error"])
        return tr


class LlamaServer(System):
    name = "llama-server"

    def __init__(self, url: str) -> None:
        self.url = url

    async def generate(self, client: httpx.AsyncClient, prompt: str, n: int, **extra: Any) -> Trace:
        body: dict[str, Any] = {"prompt": prompt, "n_predict": n, "stream": True, "cache_prompt": True}
        body["temperature"] = extra.get("temperature", 0)
        if "seed" in extra:
            body["seed"] = extra["seed"]
        if "schema" in extra:
            body["json_schema"] = extra["schema"]
        tr = Trace(time.perf_counter())
        async with client.stream("POST", self.url + "/completion", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                msg = json.loads(line[6:])
                if msg.get("content"):
                    tr.stamps.append(time.perf_counter())
                if msg.get("stop"):
                    tr.tokens = int(msg.get("timings", {}).get("predicted_n", len(tr.stamps)))
        return tr


def story(i: int) -> str:
    return f"Write a long story about {TOPICS[i % len(TOPICS)]} (number {i})."


async def level(sys_: System, client: httpx.AsyncClient, streams: int, tokens: int) -> tuple[float, float]:
    """(aggregate tok/s over the whole wall time, median TTFT in seconds)."""
    t0 = time.perf_counter()
    traces = await asyncio.gather(*(sys_.generate(client, story(i), tokens) for i in range(streams)))
    wall = time.perf_counter() - t0
    return sum(t.tokens for t in traces) / wall, statistics.median(t.ttft for t in traces)


async def constrained(sys_: System, client: httpx.AsyncClient, rounds: int) -> tuple[float, float]:
    """Median decode tok/s (first to last token) without and with the JSON schema."""
    prompt = "List forty animals as JSON:"
    free, fixed = [], []
    for _ in range(rounds):
        free.append((await sys_.generate(client, prompt, 128)).decode_rate)
        fixed.append((await sys_.generate(client, prompt, 128, schema=SCHEMA)).decode_rate)
    return statistics.median(free), statistics.median(fixed)


async def admission(sys_: System, client: httpx.AsyncClient, long_prompt: str) -> tuple[float, float, float]:
    """p95 and max inter-token gap of 4 running streams while a long prompt is admitted; its TTFT."""
    runners = [asyncio.create_task(sys_.generate(client, story(i), 400, temperature=1.0, seed=i + 1)) for i in range(4)]
    await asyncio.sleep(3.0)  # all four are decoding
    t_submit = time.perf_counter()
    long = await sys_.generate(client, long_prompt, 4)
    t_end = long.stamps[0] if long.stamps else time.perf_counter()
    traces = await asyncio.gather(*runners)
    gaps = []
    for tr in traces:
        for a, b in zip(tr.stamps, tr.stamps[1:], strict=False):
            if b >= t_submit and a <= t_end:
                gaps.append(b - a)
    gaps.sort()
    p95 = gaps[min(len(gaps) - 1, int(0.95 * len(gaps)))] if gaps else float("nan")
    return p95, (gaps[-1] if gaps else float("nan")), t_end - t_submit


async def alone(sys_: System, client: httpx.AsyncClient, long_prompt: str, r: int) -> float:
    """TTFT in seconds of the long prompt with nothing else running; its opening names the
    round and the system, so that no prompt cache holds any of it."""
    return (await sys_.generate(client, f"Round {r} on {sys_.name}. " + long_prompt, 1)).ttft


async def long_prompt_text(url: str | None) -> str:
    """About 1,500 tokens of plain prose (counted with llama-server's tokenizer when it runs)."""
    sentence = "The keeper climbed the stairs of the old lighthouse and watched the grey sea below. "
    text = sentence * 95
    if url:
        async with httpx.AsyncClient() as c:
            n = len((await c.post(url + "/tokenize", json={"content": text})).json()["tokens"])
        text = sentence * round(95 * 1500 / n)
    return text


async def guarded(sys_: System, measure: Awaitable[T], failed: T) -> T:
    """The measure, or `failed` (NaNs) when the system dropped a request: one failure
    (llama-server has dropped JSON-schema requests) does not end the whole run."""
    try:
        return await measure
    except (httpx.HTTPError, RuntimeError) as exc:
        print(f"{sys_.name:12s} request failed: {exc!r}", flush=True)
        return failed


async def run(systems: list[System], levels: list[int], tokens: int, rounds: int, llama_url: str | None) -> None:
    results: dict[str, dict[str, Any]] = {s.name: {} for s in systems}
    long_prompt = await long_prompt_text(llama_url)
    async with httpx.AsyncClient(timeout=600) as client:
        for s in systems:  # load and warm up
            await s.generate(client, story(0), 4)
        for n in levels:
            for s in systems:
                results[s.name][f"agg{n}"] = await guarded(s, level(s, client, n, tokens), (NAN, NAN))
                print(f"{s.name:12s} {n:2d} streams: {results[s.name][f'agg{n}'][0]:7.2f} tok/s", flush=True)
        for s in systems:
            results[s.name]["json"] = await guarded(s, constrained(s, client, rounds), (NAN, NAN))
            print(f"{s.name:12s} json: {results[s.name]['json']}", flush=True)
        for s in systems:
            results[s.name]["admit"] = await guarded(s, admission(s, client, long_prompt), (NAN, NAN, NAN))
            print(f"{s.name:12s} admission: {results[s.name]['admit']}", flush=True)
        for r in range(rounds):  # the systems take turns
            for s in systems:
                ttft = await guarded(s, alone(s, client, long_prompt, r), NAN)
                results[s.name].setdefault("alone", []).append(ttft)
                print(f"{s.name:12s} long prompt alone: {results[s.name]['alone'][-1]:.2f} s", flush=True)
    print()
    names = [s.name for s in systems]
    print("| metric | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for n in levels:
        print(
            f"| (b) aggregate decode, {n} streams (tok/s) | "
            + " | ".join(f"{results[x][f'agg{n}'][0]:.1f}" for x in names)
            + " |"
        )
    for n in levels:
        print(
            f"| (c) median TTFT, {n} streams (ms) | "
            + " | ".join(f"{results[x][f'agg{n}'][1] * 1e3:.0f}" for x in names)
            + " |"
        )
    for x in names:
        free, fixed = results[x]["json"]
        print(f"| (d) {x}: free / JSON-schema decode (tok/s), ratio | {free:.1f} / {fixed:.1f}, {fixed / free:.2f} |")
    for x in names:
        p95, worst, ttft = results[x]["admit"]
        print(f"| (e) {x}: p95 / max inter-token gap, long-prompt TTFT (s) | {p95:.3f} / {worst:.3f}, {ttft:.2f} |")
    alone_s = " | ".join(f"{statistics.median(results[x]['alone']):.2f}" for x in names)
    print(f"| (f) median TTFT of the 1,500-token prompt alone (s) | {alone_s} |")
    if levels[0] == 1 and len(levels) > 1:
        for x in names:
            base = results[x]["agg1"][0]
            scale = ", ".join(f"{n}: {results[x][f'agg{n}'][0] / base:.2f}x" for n in levels[1:])
            print(f"scaling {x} vs its single stream: {scale}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--skip-llama-server", action="store_true")
    args = parser.parse_args()
    model = args.model or gemma_path()
    levels = [int(x) for x in args.levels.split(",")]
    print(f"model {model.name}  threads {args.threads}  num_ctx {NUM_CTX}/seq  slots {PARALLEL}  FA off  KV f16")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"CORRAL_NUM_PARALLEL": str(PARALLEL), "CORRAL_FLASH_ATTENTION": "0", "CORRAL_KV_CACHE_TYPE": "f16"}
        stack = start_stack(Path(tmp), **env)
        try:
            create_model(stack.url, "bench", model)
            systems: list[System] = [Corral(stack.url, args.threads)]
            if args.skip_llama_server:
                asyncio.run(run(systems, levels, args.tokens, args.rounds, None))
                return 0
            log = Path(tmp) / "llama-server.log"
            kw = {"threads": args.threads, "num_ctx": NUM_CTX, "parallel": PARALLEL, "flash_attn": False}
            with llama_server.serve(model, port=free_port(), log=log, **kw) as url:  # type: ignore[arg-type]
                systems.append(LlamaServer(url))
                asyncio.run(run(systems, levels, args.tokens, args.rounds, url))
        finally:
            stop_stack(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
