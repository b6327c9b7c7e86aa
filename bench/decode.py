#!/usr/bin/env python3
"""Decode speed through Corral's REST streaming vs direct llama-cpp-python, same model, same run.

    .venv/bin/python bench/decode.py [--model PATH] [--tokens 128] [--rounds 3] [--threads N]
                                     [--observe] [--baseline DIR] [--cpu]
                                     [--stack-env KEY=VALUE ...]

Starts `corral serve` on a free port with a temporary models directory, creates the model
from the GGUF, then alternates rounds: direct `Llama` greedy decode, and a streamed
`/api/generate` with the same prompt, thread count, context and `num_predict`. Decode speed
is measured from the first to the last token on both sides (prompt evaluation excluded), and
the ratio REST/direct is printed (target ≥ 0.97). Threads, context, batch size, flash attention
(off) and the sliding-window cache mode are pinned to the same values on both sides.

`--cpu` also prints where the CPU went during the REST rounds: milliseconds of CPU per
token for the client (this process), each service, and each thread of the runner and the
gateway; on a machine with as many cores as decode threads, every millisecond outside
llama.cpp's threads is taken from them. `--stack-env KEY=VALUE` sets the corral stack's
environment (not the baseline's). `--observe` runs the stack as an operator watching it
would: every service's metrics port on and scraped every second, and every span exported
over OTLP/HTTP to a collector in this process. `--baseline DIR` also starts a second stack
from another checkout (e.g. a git worktree of an older commit) and interleaves its rounds
(the two take turns going first), so "with and without" a change are measured in the same
run: `git worktree add /tmp/base <rev>` then `--baseline /tmp/base`; per-round ratios are
printed. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.assets import gemma_path
from tests.stack import Stack, create_model, free_port, start_stack, stop_stack

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
NUM_CTX = 1024


def direct(
    model: Path,
    tokens: int,
    threads: int,
    rounds: int,
    gpu_layers: int = 0,
    logit_bias: dict[int, float] | None = None,
    cpu: list[float] | None = None,
) -> list[float]:
    """`cpu`: a list to append each round's CPU ms per token of this process to."""
    from llama_cpp import Llama

    from services.runner.native import high_level_defaults_like_the_runner

    with high_level_defaults_like_the_runner():
        llm = Llama(
            str(model),
            n_ctx=NUM_CTX,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            n_gpu_layers=gpu_layers,
            flash_attn=False,  # pinned: the stack runs with CORRAL_FLASH_ATTENTION=0
            swa_full=False,  # as the runner (and llama-server) configure it
            verbose=False,
        )
    speeds = []
    for _ in range(rounds):
        llm.reset()
        stamps = []
        before = sum(psutil.Process().cpu_times()[:2])
        chunks = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True, logit_bias=logit_bias)
        for _chunk in chunks:
            stamps.append(time.perf_counter())
        if cpu is not None:
            cpu.append((sum(psutil.Process().cpu_times()[:2]) - before) * 1e3 / len(stamps))
        speeds.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    del llm
    return speeds


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the client, each thread of the runner and the gateway, and every other service."""
    out = {"client": sum(psutil.Process().cpu_times()[:2])}
    parent = psutil.Process(stack.proc.pid)
    out["supervisor"] = sum(parent.cpu_times()[:2])
    for child in parent.children():
        service = child.cmdline()[-1]
        if service not in ("runner", "gateway"):
            out[service] = sum(child.cpu_times()[:2])
            continue
        for t in child.threads():
            with contextlib.suppress(OSError):  # the thread ended
                comm = Path(f"/proc/{child.pid}/task/{t.id}/comm").read_text().strip()
                out[f"{service} thread {t.id} ({comm})"] = t.user_time + t.system_time
    return out


def rest(
    url: str,
    model: str,
    tokens: int,
    threads: int,
    rounds: int,
    logit_bias: dict[int, float] | None = None,
    cpu: tuple[Stack, dict[str, float]] | None = None,
) -> tuple[list[float], list[float]]:
    """`cpu`: a stack, and a dict that sums per round each process's or thread's CPU ms per token."""
    options: dict[str, Any] = {"temperature": 0, "num_predict": tokens, "num_ctx": NUM_CTX, "num_thread": threads}
    body: dict[str, Any] = {"model": model, "prompt": PROMPT, "raw": True, "options": options}
    if logit_bias:
        options["logit_bias"] = {str(k): v for k, v in logit_bias.items()}
    wall, reported = [], []
    with httpx.Client(timeout=600) as client:
        client.post(url + "/api/generate", json={**body, "options": {**body["options"], "num_predict": 1}})  # load
        for _ in range(rounds):
            stamps = []
            final: dict[str, int] = {}
            before = cpu_seconds(cpu[0]) if cpu else {}
            with client.stream("POST", url + "/api/generate", json=body) as resp:
                for line in resp.iter_lines():
                    if not line:
                        continue
                    stamps.append(time.perf_counter())
                    if '"done":true' in line:
                        final = httpx.Response(200, content=line).json()
            # The final chunk carries no token; count the token chunks only.
            token_stamps = stamps[:-1]
            if cpu:
                for name, seconds in cpu_seconds(cpu[0]).items():
                    per_token = (seconds - before.get(name, 0.0)) * 1e3 / len(token_stamps)
                    cpu[1][name] = cpu[1].get(name, 0.0) + per_token
            # Tokens, not lines: a line carries several when the client fell behind.
            wall.append((final["eval_count"] - 1) / (token_stamps[-1] - token_stamps[0]))
            reported.append(final["eval_count"] / (final["eval_duration"] / 1e9))
    return wall, reported


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that accepts and drops every export."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def observed_env() -> Iterator[tuple[dict[str, str], list[str]]]:
    """Environment that turns metrics and tracing on, and the metrics URLs to scrape."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    ports = {s: free_port() for s in ("registry", "scheduler", "runner")}
    env = {f"CORRAL_{s.upper()}_METRICS": f"127.0.0.1:{p}" for s, p in ports.items()}
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    try:
        yield env, [f"http://127.0.0.1:{p}/metrics" for p in ports.values()]
    finally:
        sink.shutdown()


@contextlib.contextmanager
def scraping(urls: list[str], every: float = 1.0) -> Iterator[None]:
    stop = threading.Event()

    def run() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.wait(every):
                for url in urls:
                    with contextlib.suppress(httpx.HTTPError):
                        client.get(url)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: the Gemma 3 270M test model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=psutil.cpu_count(logical=False) or 1)
    parser.add_argument("--observe", action="store_true", help="metrics scraped every second and traces exported")
    parser.add_argument(
        "--stack-env", action="append", default=[], metavar="KEY=VALUE", help="environment of the corral stack"
    )
    parser.add_argument("--cpu", action="store_true", help="CPU ms per token of each process and thread")
    parser.add_argument("--baseline", type=Path, default=None, help="another Corral checkout to interleave with")
    args = parser.parse_args()
    model = args.model or gemma_path()

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as cleanup:
        env, urls = cleanup.enter_context(observed_env()) if args.observe else ({}, [])
        stacks: dict[str, Stack] = {}
        env.update(kv.split("=", 1) for kv in args.stack_env)
        stacks["corral"] = start_stack(Path(tmp) / "corral", **{"CORRAL_FLASH_ATTENTION": "0", **env})
        cleanup.callback(stop_stack, stacks["corral"])
        if args.baseline:
            src = str(args.baseline.resolve())
            stacks["baseline"] = start_stack(Path(tmp) / "baseline", CORRAL_FLASH_ATTENTION="0", PYTHONPATH=src)
            cleanup.callback(stop_stack, stacks["baseline"])
        if args.observe:
            cleanup.enter_context(scraping([*urls, stacks["corral"].url + "/metrics"]))
        for stack in stacks.values():
            create_model(stack.url, "bench", model)
        wall: dict[str, list[float]] = {name: [] for name in stacks}
        reported: dict[str, list[float]] = {name: [] for name in stacks}
        direct_speeds: list[float] = []
        cpu: dict[str, float] = {}
        direct_cpu: list[float] = []
        for r in range(args.rounds):
            direct_speeds += direct(model, args.tokens, args.threads, 1, cpu=direct_cpu)
            # The stacks take turns going first: the position in a round biases by about 1 %.
            for name, stack in list(stacks.items())[:: 1 if r % 2 == 0 else -1]:
                watch = (stack, cpu) if args.cpu and name == "corral" else None
                round_wall, round_reported = rest(stack.url, "bench", args.tokens, args.threads, 1, cpu=watch)
                wall[name] += round_wall
                reported[name] += round_reported

    d = statistics.median(direct_speeds)
    print(f"model            {model.name}")
    print(f"threads          {args.threads}   tokens {args.tokens}   rounds {args.rounds}   num_ctx {NUM_CTX}")
    print(f"direct           {d:8.2f} tok/s   (llama-cpp-python create_completion, streamed)")
    for name in stacks:
        label = name + (" (observed)" if args.observe and name == "corral" else "")
        w, r = statistics.median(wall[name]), statistics.median(reported[name])
        print(f"{label}")
        print(f"  REST streaming {w:8.2f} tok/s   (client-side, first to last NDJSON token line)")
        print(f"  REST reported  {r:8.2f} tok/s   (eval_count / eval_duration of the final chunk)")
        print(f"  ratio REST/direct {w / d:6.3f}   (target >= 0.97)")
    if args.cpu:
        print(f"CPU ms per token, direct: {statistics.mean(direct_cpu):.3f} (the whole process)")
        print(f"CPU ms per token, corral: {sum(cpu.values()) / args.rounds:.3f} (client and stack), by part:")
        for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1]):
            if ms / args.rounds >= 0.005:
                print(f"  {ms / args.rounds:7.3f}  {name}")
    if args.baseline:
        ratio = statistics.median(wall["corral"]) / statistics.median(wall["baseline"])
        paired = [c / b for c, b in zip(wall["corral"], wall["baseline"], strict=True)]
        print(f"corral / baseline {ratio:6.3f}   per round: {' '.join(f'{x:.3f}' for x in paired)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
