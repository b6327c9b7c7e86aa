#!/usr/bin/env python3
"""The CUDA path end to end on a machine with an NVIDIA GPU: devices, placement, VRAM, output, speed.

    python bench/gpu.py [--model PATH] [--tokens 256] [--rounds 3] [--streams 8]

1. Devices: what the runner's `NvmlProbe` reports for every GPU NVML sees.
2. A stack (`corral serve`, `CORRAL_RUNNER_DEVICE=cuda`) loads the model: `/api/ps` shows where
   it went (`size`, `size_vram`), set against the GPU memory NVML sees taken by the load.
3. Output: greedy text through REST equals direct llama-cpp-python's with every layer on the GPU.
4. Speed: single-stream decode through REST streaming vs direct (the ratio `bench/decode.py`
   prints), and aggregate decode of `--streams` concurrent streams.

`--bisect-load` first loads the model six ways, each in its own process, to tell which of the
runner's differences from plain llama-cpp-python a crash at load follows (docs/performance.md,
"GPU").

Without `--model` it writes a random-weight llama-shaped f16 GGUF (2048 wide, 16 layers, 0.8B): its text is
noise, but placement, memory and speed are those of a real model of that shape. Needs a
llama-cpp-python built with GGML_CUDA=on. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.decode import NUM_CTX, PROMPT, direct, rest
from services.runner.devices import NvmlProbe
from tests.ggufs import write_tiny_gguf
from tests.stack import create_model, start_stack, stop_stack

GiB = 1 << 30
# Random weights would end early (eos) and emit stray bytes: only tests.ggufs' words may follow.
WORDS_ONLY = dict.fromkeys(range(259), -100.0)  # <unk>, <s>, </s> and the 256 byte tokens


def gpu_used(probe: NvmlProbe) -> int:
    return sum(d.total_memory_bytes - d.free_memory_bytes for d in probe.probe())


def direct_text(model: Path, tokens: int, logit_bias: dict[int, float] | None) -> str:
    from llama_cpp import Llama

    from services.runner.native import high_level_defaults_like_the_runner

    with high_level_defaults_like_the_runner():
        llm = Llama(str(model), n_ctx=NUM_CTX, n_gpu_layers=-1, flash_attn=False, swa_full=False, verbose=False)
    out = llm.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, logit_bias=logit_bias)
    del llm
    return str(out["choices"][0]["text"])  # type: ignore[index]


# Ways of loading the model, each in its own process (a segfault ends only that one): which of
# the runner's differences from plain llama-cpp-python a crash at load follows.
_LOAD = """
import sys, threading
from services.runner import llamalog, native
from services.runner.native import LoadSpec, NativeModel
spec = LoadSpec(sys.argv[1], num_ctx=1024, num_gpu=-1)
{patch}
{run}
print("loaded")
"""
LOAD_VARIANTS = {
    "llama-cpp-python Llama (main thread)": ("", "from llama_cpp import Llama; Llama(sys.argv[1], n_gpu_layers=-1)"),
    "NativeModel (main thread)": ("", "NativeModel(spec, lambda f: True)"),
    "NativeModel on a thread, as the runner": (
        "",
        "t = threading.Thread(target=NativeModel, args=(spec, lambda f: True)); t.start(); t.join()",
    ),
    "NativeModel, no progress callback": ("", "NativeModel(spec)"),
    "NativeModel, extra buffer types kept": ("native.cpu_has_amx = lambda: False", "NativeModel(spec)"),
    "NativeModel, llama-cpp-python's log callback": ("llamalog.install = lambda: None", "NativeModel(spec)"),
}


def bisect_load(model: Path) -> None:
    for name, (patch, run) in LOAD_VARIANTS.items():
        code = _LOAD.format(patch=patch, run=run)
        try:
            p = subprocess.run(
                [sys.executable, "-X", "faulthandler", "-c", code, str(model)],
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True,
                text=True,
                timeout=120,
            )
            outcome = "ok" if p.returncode == 0 else f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            outcome = "timed out"
        print(f"load    {name}: {outcome}")


def aggregate(url: str, streams: int, tokens: int, options: dict[str, object]) -> float:
    """Tokens per second over `streams` concurrent greedy generations."""

    def one(i: int) -> int:
        body = {
            "model": "bench",
            "prompt": f"{i}: {PROMPT}",
            "raw": True,
            "stream": False,
            "options": options,
        }
        return int(httpx.post(url + "/api/generate", json=body, timeout=600).json()["eval_count"])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        total = sum(pool.map(one, range(streams)))
    return total / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--bisect-load", action="store_true", help="first load the model six ways, one per process")
    args = parser.parse_args()
    probe = NvmlProbe()
    for d in probe.probe():
        print(f"device  {d.id}  {d.name}  total {d.total_memory_bytes / GiB:.1f} GiB  free "
              f"{d.free_memory_bytes / GiB:.1f} GiB  {d.uuid}")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        model, bias = args.model, None
        if model is None:
            bias = WORDS_ONLY
            model = Path(tmp) / "random-0.8b-f16.gguf"
            facts = write_tiny_gguf(
                model, n_embd=2048, n_layer=16, n_head=32, n_head_kv=4, n_ff=5632, context_length=4096, f16=True
            )
            print(f"model   {model.name}: {facts.parameter_count / 1e9:.2f}B parameters, {facts.size / GiB:.2f} GiB")
        if args.bisect_load:
            bisect_load(model)
        env = {"CORRAL_RUNNER_DEVICE": "cuda", "CORRAL_FLASH_ATTENTION": "0", "CORRAL_NUM_PARALLEL": str(args.streams)}
        stack = start_stack(Path(tmp) / "stack", **env)
        try:
            create_model(stack.url, "bench", model)
            before = gpu_used(probe)
            options: dict[str, object] = {"temperature": 0, "num_predict": args.tokens, "num_ctx": NUM_CTX}
            if bias:
                options["logit_bias"] = {str(k): v for k, v in bias.items()}
            body = {
                "model": "bench",
                "prompt": PROMPT,
                "raw": True,
                "stream": False,
                "options": options,
            }
            r = httpx.post(stack.url + "/api/generate", json=body, timeout=600)
            r.raise_for_status()
            rest_text = r.json()["response"]
            taken = gpu_used(probe) - before
            ps = httpx.get(stack.url + "/api/ps", timeout=10).json()["models"]
            keys = ("name", "size", "size_vram", "context_length")
            print("ps      " + json.dumps([{k: m.get(k) for k in keys} for m in ps]))
            for m in ps:
                print(f"vram    estimate {m['size_vram'] / GiB:.2f} GiB, NVML saw the load take {taken / GiB:.2f} GiB "
                      f"(estimate/actual {m['size_vram'] / max(taken, 1):.2f})")  # fmt: skip
            same = rest_text == direct_text(model, args.tokens, bias)
            print(f"output  REST greedy text equals direct llama-cpp-python (all layers on the GPU): {same}")
            speeds_d, speeds_r = [], []
            for _ in range(args.rounds):
                speeds_d += direct(model, args.tokens, 1, 1, gpu_layers=-1, logit_bias=bias)
                speeds_r += rest(stack.url, "bench", args.tokens, 1, 1, logit_bias=bias)[0]
            d, w = statistics.median(speeds_d), statistics.median(speeds_r)
            print(f"decode  direct {d:.1f} tok/s   REST {w:.1f} tok/s   ratio {w / d:.3f}   ({args.rounds} rounds)")
            agg = aggregate(stack.url, args.streams, args.tokens, options)
            print(f"streams {args.streams} concurrent: {agg:.1f} tok/s aggregate through REST")
        finally:
            stop_stack(stack)
            print("log tail:\n" + stack.logs()[-1500:])
    probe.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
