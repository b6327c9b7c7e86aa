#!/usr/bin/env python3
"""Load and soak against the real stack: many concurrent clients, a mix of surfaces.

    .venv/bin/python bench/load.py [--clients 100] [--requests 1000] [--max-seconds 600]
                                   [--soak-minutes 0] [--num-parallel 4] [--url URL]

Starts `corral serve` (unless --url points at a running gateway), creates the model, warms
it, then runs `--clients` concurrent clients that together send `--requests` requests (or
stop at `--max-seconds`), cycling through /api/generate and /api/chat (streamed and not),
/api/embed, /v1/chat/completions (streamed and not), /v1/completions and /v1/embeddings,
each with short outputs. A request fails unless it answers 200 with a complete body (a
final `done` line, or `data: [DONE]`); 503 from a full queue (CORRAL_MAX_QUEUE) is counted
apart as the configured refusal. Reported: counts, latency p50/p90/p99 per kind and
overall, and the RSS of every service (start, peak, end).

--soak-minutes N then keeps the same load going for N minutes, sampling every service's RSS
every 10 s, and reports each one's growth from the first minute's level to the end (a leak
shows as steady growth). Not a test: nothing is asserted; the exit status is 1 when any
request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.assets import gemma_path
from tests.stack import Stack, create_model, start_stack, stop_stack

MODEL = "gemma3"
# One context size for every surface (CORRAL_CONTEXT_LENGTH of the started stack): the
# OpenAI surfaces take no num_ctx, and a different one would be another instance.
NUM_CTX = 512
OPTIONS = {"temperature": 0.7, "num_predict": 8}
PROMPT = "Name a colour."
MESSAGES = [{"role": "user", "content": PROMPT}]


def _kinds() -> list[tuple[str, str, dict[str, Any], bool]]:
    """(name, path, body, streamed)."""
    oa = {"model": MODEL, "max_tokens": OPTIONS["num_predict"]}
    return [
        ("generate", "/api/generate", {"model": MODEL, "prompt": PROMPT, "stream": False, "options": OPTIONS}, False),
        ("generate-stream", "/api/generate", {"model": MODEL, "prompt": PROMPT, "options": OPTIONS}, True),
        ("chat", "/api/chat", {"model": MODEL, "messages": MESSAGES, "stream": False, "options": OPTIONS}, False),
        ("chat-stream", "/api/chat", {"model": MODEL, "messages": MESSAGES, "options": OPTIONS}, True),
        ("embed", "/api/embed", {"model": MODEL, "input": ["hello", "world"]}, False),
        ("openai-chat", "/v1/chat/completions", {**oa, "messages": MESSAGES}, False),
        ("openai-chat-stream", "/v1/chat/completions", {**oa, "messages": MESSAGES, "stream": True}, True),
        ("openai-completion", "/v1/completions", {**oa, "prompt": PROMPT}, False),
        ("openai-embed", "/v1/embeddings", {"model": MODEL, "input": "hello"}, False),
    ]


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    refused: int = 0  # 503: the configured queue limit (or a wait past CORRAL_LOAD_TIMEOUT)
    refused_why: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    failures: list[str] = field(default_factory=list)
    sent: int = 0


async def _one(client: httpx.AsyncClient, path: str, body: dict[str, Any], streamed: bool) -> tuple[int, str]:
    """(status, problem); problem is "" for a complete answer."""
    if not streamed:
        r = await client.post(path, json=body)
        if r.status_code != 200:
            return r.status_code, r.text[:200]
        data = r.json()
        ok = data.get("done") is True or "choices" in data or "embeddings" in data or "data" in data
        return 200, "" if ok else f"incomplete: {r.text[:200]}"
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.text[:200]
        last = ""
        async for line in r.aiter_lines():
            if line.strip():
                last = line
    if path.startswith("/v1/"):
        return 200, "" if last.strip() == "data: [DONE]" else f"stream ended with {last[:200]}"
    final = json.loads(last) if last else {}
    return 200, "" if final.get("done") is True else f"stream ended with {last[:200]}"


async def _client(
    client: httpx.AsyncClient, res: Results, budget: list[int], until: float, kinds: list[Any], offset: int
) -> None:
    i = offset
    while budget[0] > 0 and time.monotonic() < until:
        budget[0] -= 1
        res.sent += 1
        name, path, body, streamed = kinds[i % len(kinds)]
        i += 1
        t0 = time.monotonic()
        try:
            status, problem = await _one(client, path, body, streamed)
        except httpx.HTTPError as err:
            status, problem = 0, repr(err)
        took = time.monotonic() - t0
        if status == 503:
            res.refused += 1
            res.refused_why[problem[:120]] += 1
        elif problem:
            res.failures.append(f"{name}: {status} {problem}")
        else:
            res.latencies[name].append(took)


async def run_load(url: str, clients: int, requests: int, seconds: float) -> Results:
    res = Results()
    budget = [requests]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        kinds = _kinds()
        until = time.monotonic() + seconds
        await asyncio.gather(*(_client(client, res, budget, until, kinds, n) for n in range(clients)))
    return res


class RssSampler:
    """RSS of every child of `corral serve`, by service, sampled in a thread."""

    def __init__(self, supervisor_pid: int, every: float) -> None:
        self.root = psutil.Process(supervisor_pid)
        self.every = every
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for child in self.root.children():
            try:
                name = child.cmdline()[-1]
                out[name] = out.get(name, 0) + child.memory_info().rss
            except psutil.Error:
                continue
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.sample()))
            self._stop.wait(self.every)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.samples.append((time.monotonic(), self.sample()))

    def summary(self) -> dict[str, dict[str, float]]:
        names = sorted({n for _, s in self.samples for n in s})
        mib = 1 << 20
        return {
            n: {
                "start_mib": self.samples[0][1].get(n, 0) / mib,
                "peak_mib": max(s.get(n, 0) for _, s in self.samples) / mib,
                "end_mib": self.samples[-1][1].get(n, 0) / mib,
            }
            for n in names
        }


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def report(res: Results, took: float, rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    every = [x for v in res.latencies.values() for x in v]
    out: dict[str, Any] = {
        "sent": res.sent,
        "ok": len(every),
        "refused_503": res.refused,
        "refused_why": dict(res.refused_why),
        "failed": len(res.failures),
        "seconds": round(took, 1),
        "requests_per_s": round(res.sent / took, 2) if took else 0,
        "latency_s": {
            name: {"n": len(v), "p50": _pct(v, 50), "p90": _pct(v, 90), "p99": _pct(v, 99)}
            for name, v in sorted(res.latencies.items())
        },
        "rss": rss,
    }
    out["latency_s"]["all"] = {"n": len(every), "p50": _pct(every, 50), "p90": _pct(every, 90), "p99": _pct(every, 99)}
    counts = f"{len(every)} ok, {res.refused} refused (503), {len(res.failures)} failed"
    print(f"{res.sent} requests in {took:.1f} s: {counts}")
    print(f"{'kind':<22}{'n':>6}{'p50 s':>9}{'p90 s':>9}{'p99 s':>9}")
    for name, s in out["latency_s"].items():
        print(f"{name:<22}{s['n']:>6}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}")
    print(f"{'service':<12}{'start MiB':>11}{'peak MiB':>11}{'end MiB':>11}")
    for name, r in rss.items():
        print(f"{name:<12}{r['start_mib']:>11.0f}{r['peak_mib']:>11.0f}{r['end_mib']:>11.0f}")
    for why, n in res.refused_why.items():
        print(f"503 x{n}: {why}")
    for f in res.failures[:10]:
        print("FAILED", f)
    return out


def soak_growth(sampler: RssSampler, warmup: float) -> dict[str, float]:
    """Per service: MiB from the mean of the first `warmup` seconds' samples to the last sample's."""
    t0 = sampler.samples[0][0]
    first = [s for t, s in sampler.samples if t - t0 <= warmup] or [sampler.samples[0][1]]
    last = sampler.samples[-1][1]
    return {n: (last.get(n, 0) - statistics.mean(s.get(n, 0) for s in first)) / (1 << 20) for n in sorted(last)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--requests", type=int, default=1000, help="total requests of the load phase")
    ap.add_argument("--max-seconds", type=float, default=600, help="the load phase ends by then")
    ap.add_argument("--soak-minutes", type=float, default=0)
    ap.add_argument("--num-parallel", type=int, default=4, help="CORRAL_NUM_PARALLEL of the started stack")
    ap.add_argument("--max-queue", type=int, default=512, help="CORRAL_MAX_QUEUE of the started stack")
    ap.add_argument("--model", type=Path, default=None, help="GGUF to serve (default: the test Gemma)")
    ap.add_argument("--url", default="", help="a running gateway (CORRAL_CONTEXT_LENGTH=512) with gemma3")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    stack: Stack | None = None
    tmp = tempfile.TemporaryDirectory(prefix="corral-load-")
    if not args.url:
        stack = start_stack(
            Path(tmp.name),
            CORRAL_NUM_PARALLEL=str(args.num_parallel),
            CORRAL_MAX_QUEUE=str(args.max_queue),
            CORRAL_KEEP_ALIVE="-1",
            CORRAL_CONTEXT_LENGTH=str(NUM_CTX),
        )
        create_model(stack.url, MODEL, args.model or gemma_path())
    url = args.url or (stack.url if stack else "")
    try:
        warm = asyncio.run(run_load(url, 1, len(_kinds()), 300))  # loads the model for every kind
        if warm.failures:
            print("warm-up failed:", *warm.failures, sep="\n")
            return 1
        sampler = RssSampler(stack.proc.pid, 1.0).start() if stack else None
        t0 = time.monotonic()
        res = asyncio.run(run_load(url, args.clients, args.requests, args.max_seconds))
        took = time.monotonic() - t0
        if sampler:
            sampler.stop()
        figures = {"load": report(res, took, sampler.summary() if sampler else {})}
        failed = bool(res.failures)
        if args.soak_minutes > 0:
            soaker = RssSampler(stack.proc.pid, 10.0).start() if stack else None
            t0 = time.monotonic()
            soak = asyncio.run(run_load(url, args.clients, 1 << 62, args.soak_minutes * 60))
            took = time.monotonic() - t0
            if soaker:
                soaker.stop()
            print(f"\nsoak, {args.soak_minutes:g} min:")
            figures["soak"] = report(soak, took, soaker.summary() if soaker else {})
            if soaker:
                growth = soak_growth(soaker, 60)
                figures["soak"]["rss_growth_mib"] = growth
                print("RSS growth after the first minute (MiB):", {n: round(g, 1) for n, g in growth.items()})
            failed = failed or bool(soak.failures)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 1 if failed else 0
    finally:
        if stack:
            stop_stack(stack)
        tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
