"""Quantize a GGUF file with llama.cpp's quantizer (llama_model_quantize via llama-cpp-python)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp as lc

from corral.errors import CorralError
from corral.v1 import common_pb2

# Ollama's spelling -> (llama_ftype, approximate bits per weight, for the progress estimate).
FTYPES: dict[str, tuple[int, float]] = {
    "F32": (lc.LLAMA_FTYPE_ALL_F32, 32.0),
    "F16": (lc.LLAMA_FTYPE_MOSTLY_F16, 16.0),
    "BF16": (lc.LLAMA_FTYPE_MOSTLY_BF16, 16.0),
    "Q8_0": (lc.LLAMA_FTYPE_MOSTLY_Q8_0, 8.5),
    "Q4_K_M": (lc.LLAMA_FTYPE_MOSTLY_Q4_K_M, 4.9),
    "Q4_K_S": (lc.LLAMA_FTYPE_MOSTLY_Q4_K_S, 4.6),
}
SOURCE_BITS = {"F32": 32.0, "F16": 16.0, "BF16": 16.0}


def estimated_size(src_size: int, src_type: str, dst_type: str) -> int:
    return max(1, int(src_size * FTYPES[dst_type][1] / SOURCE_BITS.get(src_type, 16.0)))


def quantize(src: Path, dst: Path, dst_type: str) -> None:
    """Blocking; writes `dst` (the caller makes it atomic). Raises UNSPECIFIED (a 500) when llama.cpp fails."""
    params = lc.llama_model_quantize_default_params()
    params.ftype = FTYPES[dst_type][0]
    params.nthread = max(1, (os.cpu_count() or 2) - 1)  # leave a core to the event loop and the runner
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise CorralError(common_pb2.ERROR_REASON_UNSPECIFIED, f"quantizing to {dst_type} failed ({rc})")
