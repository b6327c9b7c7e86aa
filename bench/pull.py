#!/usr/bin/env python3
"""Pull throughput from a loopback OCI registry vs a plain loopback copy of the same bytes.

    .venv/bin/python bench/pull.py [--model PATH] [--rounds 3]

Starts Debian's docker-registry on a free loopback port, pushes the Gemma test model to it
from a temporary store, then alternates rounds of (a) a Corral pull into a fresh store
(ranged parts, partial file, sha256 verification, manifest write) and (b) the baseline: a
plain single-stream HTTP GET of the same blobs from the same registry into files, with no
hashing. Prints both throughputs and the ratio pull/baseline (target ≥ 0.8); also prints a
local `shutil.copyfile` of the weights for scale. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.registry.core import Registry
from services.registry.create import CreateRequest
from services.registry.download import TransferSettings
from services.registry.manifest import Manifest
from tests.assets import gemma_path
from tests.ggufs import file_digest
from tests.registry.helpers import file_chunks
from tests.registry.oci import start_oci_registry


async def plain_copy(host: str, manifest: Manifest, out: Path) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    async with httpx.AsyncClient() as client:
        for layer in (*manifest.layers, manifest.config):
            url = f"http://{host}/v2/bench/gemma/blobs/{layer.digest}"
            async with client.stream("GET", url) as resp:
                with (out / layer.digest.replace(":", "-")).open("wb") as f:
                    async for chunk in resp.aiter_raw(1 << 20):
                        f.write(chunk)
    return time.perf_counter() - start, time.process_time() - cpu


async def run(model: Path, rounds: int, settings: TransferSettings) -> None:
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp_name:
        tmp = Path(tmp_name)
        oci = start_oci_registry(tmp)
        try:
            name = f"{oci.host}/bench/gemma:latest"
            src = await Registry.open(tmp / "src")
            digest = file_digest(model)
            await src.write_blob(digest, file_chunks(model, 1 << 20))
            async for _ in src.create(CreateRequest(name=name, files={"m.gguf": digest})):
                pass
            async for _ in src.push(name, insecure=True):
                pass
            manifest = Manifest.from_bytes(await src.manifest_bytes(name))
            await src.close()
            total = manifest.size
            pulls, copies, pull_cpu, copy_cpu = [], [], [], []
            for i in range(rounds):
                dst = await Registry.open(tmp / f"dst{i}", settings)
                start, cpu = time.perf_counter(), time.process_time()
                async for _ in dst.pull(name, insecure=True):
                    pass
                pulls.append(time.perf_counter() - start)
                pull_cpu.append(time.process_time() - cpu)
                await dst.close()
                shutil.rmtree(tmp / f"dst{i}")
                out = tmp / f"copy{i}"
                out.mkdir()
                wall, cpu_s = await plain_copy(oci.host, manifest, out)
                copies.append(wall)
                copy_cpu.append(cpu_s)
                shutil.rmtree(out)
            start = time.perf_counter()
            shutil.copyfile(model, tmp / "local-copy")
            local = time.perf_counter() - start
        finally:
            oci.stop()
    mb = total / 1e6
    pull_rate, copy_rate = mb / statistics.median(pulls), mb / statistics.median(copies)
    print(f"bytes per pull: {total} ({mb:.1f} MB), rounds: {rounds}, parts in flight: {settings.parallel}")
    print(f"corral pull (verified):     {pull_rate:8.1f} MB/s  (median of {[round(t, 3) for t in pulls]} s)")
    print(f"plain loopback HTTP copy:   {copy_rate:8.1f} MB/s  (median of {[round(t, 3) for t in copies]} s)")
    print(f"local shutil.copyfile:      {mb / local:8.1f} MB/s")
    # CPU seconds of this process (all threads) per GB: steadier than wall time on a busy machine.
    gb = total / 1e9
    pull_gb, copy_gb = statistics.median(pull_cpu) / gb, statistics.median(copy_cpu) / gb
    print(f"client CPU per GB:          pull {pull_gb:.2f} s, plain copy {copy_gb:.2f} s")
    print(f"ratio pull / plain copy: {pull_rate / copy_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=TransferSettings().parallel, help="parts in flight")
    args = parser.parse_args()
    asyncio.run(run(args.model or gemma_path(), args.rounds, TransferSettings(parallel=args.parallel)))


if __name__ == "__main__":
    main()
