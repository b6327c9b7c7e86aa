"""Tiny GGUF files for tests: a small llama-shaped model and deliberately broken files.

`write_tiny_gguf` writes a complete llama model (f32 weights, an SPM vocabulary
with byte-fallback tokens) that is small enough to create in milliseconds; its
shapes follow llama.cpp's llama architecture so that other suites can load it.
The `write_*` helpers below it hand-craft malformed headers byte by byte.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFValueType, GGUFWriter, LlamaFileType, PoolingType, TokenType


@dataclass(frozen=True)
class TinyGGUF:
    path: Path
    digest: str  # "sha256:<hex>" of the file
    size: int
    parameter_count: int  # sum of the tensor element counts
    vocab_size: int


WORDS = ["▁hello", "▁world", "▁the", "▁a", "▁is", "▁of", "▁and", "▁to", "▁in", "▁Why", "▁sky", "▁blue", "."]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", *WORDS]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * (1 + len(WORDS))
    scores = [0.0] * 259 + [-float(i) for i in range(1 + len(WORDS))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(
    path: Path,
    arch: str = "llama",
    *,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 64,
    context_length: int = 256,
    chat_template: str | None = None,
    pooling_type: int | None = None,
    parameter_count: bool = False,
    general_type: str | None = None,
    extra_kv: dict[str, Any] | None = None,
    seed: int = 0,
    f16: bool = False,
) -> TinyGGUF:
    """Write a small llama-architecture GGUF with f32 weights (f16 matrices with `f16`) and
    return its facts.

    `parameter_count=True` also writes general.parameter_count (real files often
    lack it); `pooling_type` makes it look like an embedding model.
    """
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab, head_dim = len(tokens), n_embd // n_head
    shapes: dict[str, tuple[int, ...]] = {  # numpy order: GGUF dims reversed
        "token_embd.weight": (n_vocab, n_embd),
        "output_norm.weight": (n_embd,),
        "output.weight": (n_vocab, n_embd),
    }
    for i in range(n_layer):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (n_embd,),
            f"blk.{i}.attn_q.weight": (n_head * head_dim, n_embd),
            f"blk.{i}.attn_k.weight": (n_head_kv * head_dim, n_embd),
            f"blk.{i}.attn_v.weight": (n_head_kv * head_dim, n_embd),
            f"blk.{i}.attn_output.weight": (n_embd, n_head * head_dim),
            f"blk.{i}.ffn_norm.weight": (n_embd,),
            f"blk.{i}.ffn_gate.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_down.weight": (n_embd, n_ff),
            f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
        }
    params = sum(math.prod(s) for s in shapes.values())

    w = GGUFWriter(path, arch)
    w.add_name("tiny")
    if general_type:
        w.add_type(general_type)
    w.add_file_type(LlamaFileType.MOSTLY_F16 if f16 else LlamaFileType.ALL_F32)
    if parameter_count:
        w.add_uint64("general.parameter_count", params)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    if pooling_type is not None:
        w.add_pooling_type(PoolingType(pooling_type))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for key, value in (extra_kv or {}).items():
        _add_kv(w, key, value)
    for name, shape in shapes.items():
        if len(shape) == 1:
            data = np.ones(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.02).astype(np.float16 if f16 else np.float32)
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return TinyGGUF(path, file_digest(path), path.stat().st_size, params, n_vocab)


def _add_kv(w: GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, int):
        w.add_uint32(key, value) if value >= 0 else w.add_int32(key, value)
    elif isinstance(value, float):
        w.add_float32(key, value)
    elif isinstance(value, str):
        w.add_string(key, value)
    else:
        w.add_array(key, list(value))


# Hand-made (malformed) files. Layout: magic, version u32, n_tensors u64, n_kv u64,
# KVs (key string, type u32, value), tensor infos, padding, data.


def gguf_string(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(raw)) + raw


def gguf_header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv_string(key: str, value: str) -> bytes:
    return gguf_string(key) + struct.pack("<I", GGUFValueType.STRING) + gguf_string(value)


def kv_u32(key: str, value: int) -> bytes:
    return gguf_string(key) + struct.pack("<II", GGUFValueType.UINT32, value)


def tensor_info(name: str, shape: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    dims = struct.pack(f"<I{len(shape)}Q", len(shape), *shape)
    return gguf_string(name) + dims + struct.pack("<IQ", ggml_type, offset)


def write_truncated(src: Path, dst: Path, keep: int) -> Path:
    """The first `keep` bytes of a valid file."""
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def write_not_gguf(path: Path) -> Path:
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 4)
    return path


def write_huge_string_length(path: Path) -> Path:
    """A string value claiming 2**62 bytes."""
    key = gguf_string("general.architecture")
    path.write_bytes(gguf_header(0, 1) + key + struct.pack("<IQ", GGUFValueType.STRING, 2**62) + b"llama")
    return path


def write_huge_tensor_count(path: Path) -> Path:
    path.write_bytes(gguf_header(2**60, 1) + kv_string("general.architecture", "llama"))
    return path


def write_huge_kv_count(path: Path) -> Path:
    path.write_bytes(gguf_header(0, 2**40) + kv_string("general.architecture", "llama"))
    return path


def write_huge_array(path: Path) -> Path:
    """An array claiming 2**40 uint32 elements."""
    arr = gguf_string("tokenizer.ggml.token_type") + struct.pack(
        "<IIQ", GGUFValueType.ARRAY, GGUFValueType.UINT32, 2**40
    )
    path.write_bytes(gguf_header(0, 2) + kv_string("general.architecture", "llama") + arr + b"\0" * 64)
    return path


def write_bad_tensor_offset(path: Path) -> Path:
    """One f32 tensor whose data lies past the end of the file."""
    head = gguf_header(1, 1) + kv_string("general.architecture", "llama") + tensor_info("w", [8], 0, 1 << 20)
    pad = b"\0" * (-len(head) % 32)
    path.write_bytes(head + pad + b"\0" * 32)
    return path


def write_huge_tensor_dims(path: Path) -> Path:
    head = gguf_header(1, 1) + kv_string("general.architecture", "llama") + tensor_info("w", [2**40, 2**40], 0, 0)
    path.write_bytes(head + b"\0" * 64)
    return path


def write_bad_version(path: Path) -> Path:
    path.write_bytes(gguf_header(0, 0, version=99))
    return path
