#!/usr/bin/env python3
"""llama.cpp's own `llama-server`, built from the sources llama-cpp-python 0.3.36 vendors.

    .venv/bin/python bench/llama_server.py            # build into .cache/llama-server/ if missing

The binary is the reference the runner benchmark compares against: the same kernels
as the runner's llama.cpp, driven by C++ slots instead of Python. Building takes
several minutes on 2 cores (`cmake --build ... --target llama-server -j2`).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.runner.native import cpu_has_amx

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "llama-server"
VERSION = "0.3.36"
BINARY = CACHE / "build" / "bin" / "llama-server"


def ensure_built() -> Path:
    if BINARY.exists():
        return BINARY
    src = CACHE / "src"
    sdist = src / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        src.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        subprocess.run([*pip, f"llama-cpp-python=={VERSION}", "-d", str(src)], check=True)
    tree = src / f"llama_cpp_python-{VERSION}"
    if not tree.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(src, filter="data")
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_SERVER=ON"]
    flags += ["-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF"]
    build = CACHE / "build"
    subprocess.run(["cmake", "-S", str(tree / "vendor" / "llama.cpp"), "-B", str(build), *flags], check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j2"], check=True)
    return BINARY


@contextlib.contextmanager
def serve(
    model: Path, *, port: int, threads: int, num_ctx: int, parallel: int, flash_attn: bool, log: Path
) -> Iterator[str]:
    """Runs llama-server with the runner's pinned settings; yields its base URL."""
    args = [str(ensure_built()), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-t", str(threads), "-tb", str(threads), "-c", str(num_ctx * parallel), "-np", str(parallel), "-kvu"]
    args += ["-b", "512", "-ub", "512", "-fa", "on" if flash_attn else "off", "-ctk", "f16", "-ctv", "f16"]
    args += ["--no-webui", "--metrics"]
    if cpu_has_amx():
        args += ["--no-repack"]  # as the runner: AMX repacking crashes llama.cpp 0.3.36
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama-server exited:\n{log.read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("llama-server did not become healthy")
            time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is not None:  # it died under the benchmark: say why
            tail = log.read_text(errors="replace")[-3000:]
            print(f"llama-server exited with {proc.returncode}:\n{tail}", file=sys.stderr)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    print(ensure_built())
