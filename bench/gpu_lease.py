#!/usr/bin/env python3
"""Packs what a lent GPU machine needs to run `bench/gpu.py`, since nothing can be fetched there.

    .venv/bin/python bench/gpu_lease.py        # writes .gpu/ and .whl/ (both gitignored)

then, through the device tool: run `bash bench/gpu_lease.sh` with carry [".gpu", ".whl"].

- `.gpu/llama-src.tar.xz`: the llama.cpp sources llama-cpp-python 0.3.36 vendors (the sdist
  `bench/llama_server.py` downloads), without the backends the machine cannot use (≈ 2 MB);
- `.gpu/llama_cpp/`: llama-cpp-python's Python bindings from this environment, without their
  CPU libraries (the lease builds CUDA ones);
- `.whl/`: the project's other dependencies as CPython 3.12 manylinux wheels (the machine's
  Python), with everything they need (≈ 33 MB).

`bench/gpu_lease.sh` builds llama.cpp with CUDA for sm_90 (≈ 150 s on 16 cores), installs the
wheels and the bindings into /tmp/site and runs `bench/gpu.py --bisect-load`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.llama_server import CACHE, VERSION

ROOT = Path(__file__).resolve().parent.parent
GPU, WHEELS = ROOT / ".gpu", ROOT / ".whl"
KEEP = ("CMakeLists.txt", "LICENSE", "cmake", "ggml", "include", "licenses", "src", "vendor")
OTHER_BACKENDS = ("cann", "et", "hexagon", "hip", "metal", "musa", "opencl", "openvino", "sycl", "virtgpu", "vulkan")
OTHER_BACKENDS += ("webgpu", "zdnn", "zendnn")
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64")
PLATFORMS += ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def llama_sources() -> None:
    src = CACHE / "src"
    sdist = src / f"llama_cpp_python-{VERSION}.tar.gz"
    if not sdist.exists():
        src.mkdir(parents=True, exist_ok=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(src)]
        subprocess.run([*pip, f"llama-cpp-python=={VERSION}"], check=True)
    vendored = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    skip = tuple(f"{vendored}ggml/src/ggml-{b}/" for b in OTHER_BACKENDS)
    with tarfile.open(sdist) as tar, tarfile.open(GPU / "llama-src.tar.xz", "w:xz") as out:
        for member in tar:
            rel = member.name.removeprefix(vendored)
            if rel == member.name or rel.split("/", 1)[0] not in KEEP or member.name.startswith(skip):
                continue
            member.name = rel
            out.addfile(member, tar.extractfile(member) if member.isfile() else None)


def bindings() -> None:
    import llama_cpp

    pkg = Path(llama_cpp.__file__).parent
    shutil.rmtree(GPU / "llama_cpp", ignore_errors=True)
    shutil.copytree(pkg, GPU / "llama_cpp", ignore=shutil.ignore_patterns("lib", "__pycache__"))


def wheels() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = [d for d in deps if not d.startswith("llama-cpp-python")]
    deps += ["diskcache", "typing-extensions"]  # llama-cpp-python's own pure-Python needs
    shutil.rmtree(WHEELS, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", "3.12"]
    cmd += ["--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(WHEELS), *deps]
    subprocess.run(cmd, check=True)


def main() -> int:
    GPU.mkdir(exist_ok=True)
    llama_sources()
    bindings()
    wheels()
    size = sum(p.stat().st_size for d in (GPU, WHEELS) for p in d.rglob("*") if p.is_file())
    print(f"packed .gpu/ and .whl/: {size / 2**20:.1f} MiB (the device tool carries 64 MiB with the tree)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
