"""What every architecture shares: the model directory, the tensor plan and the streaming GGUF write.

An architecture module turns a ModelDir into a Plan: GGUF metadata written
through a callback and a list of OutTensors, each a lazy loader. write_gguf
writes the header and tensor infos from the plan's shapes first, then loads,
converts and writes one tensor at a time, so peak memory is about one tensor
(plus its converted copy), never the model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.convert.safetensors import SafetensorsError, TensorRef, read_tensors, to_float32

MAX_JSON = 64 << 20  # tokenizer.json of a 256k vocabulary is ~30 MB
OUTTYPES = {"f16": LlamaFileType.MOSTLY_F16, "f32": LlamaFileType.ALL_F32}

Progress = Callable[[int, int], None]  # (bytes written, total bytes)


def invalid(message: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, message)


class ModelDir:
    """A Hugging Face model directory: config.json, *.safetensors and tokenizer files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: dict[str, Any] = self.json("config.json") or {}
        shards = sorted(path.glob("*.safetensors"))
        if not shards:
            raise invalid("no *.safetensors files were supplied")
        try:
            self.tensors: dict[str, TensorRef] = read_tensors(shards)
        except SafetensorsError as exc:
            raise invalid(str(exc)) from None

    def json(self, name: str) -> Any:
        """A JSON file of the model, or None when absent; bounded in size."""
        file = self.path / name
        if not file.is_file():
            return None
        if file.stat().st_size > MAX_JSON:
            raise invalid(f"{name} is too large")
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise invalid(f"{name} is not valid JSON: {exc}") from None

    def hparam(self, *keys: str, default: Any = None) -> Any:
        for key in keys:
            if key in self.config:
                return self.config[key]
        if default is None:
            raise invalid(f"config.json lacks {keys[0]}")
        return default


@dataclass
class OutTensor:
    name: str  # GGUF name
    shape: tuple[int, ...]  # numpy order
    load: Callable[[], np.ndarray]  # float32 data, loaded only when written
    qtype: GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * (2 if self.qtype == GGMLQuantizationType.F16 else 4)


@dataclass
class Plan:
    arch: str
    write_kv: Callable[[GGUFWriter], None]
    tensors: list[OutTensor] = field(default_factory=list)

    @property
    def parameter_count(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)


def out_qtype(name: str, n_dims: int, outtype: str, keep_f32: tuple[str, ...] = ()) -> GGMLQuantizationType:
    """convert_hf_to_gguf's rule: vectors, norms and listed tensors stay F32; matrices take the outtype."""
    if outtype == "f32" or n_dims <= 1 or name.endswith("_norm.weight") or name.startswith(keep_f32):
        return GGMLQuantizationType.F32
    return GGMLQuantizationType.F16


def lazy(ref: TensorRef, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        data = to_float32(ref, ref.read())
        return transform(data) if transform else data

    return load


def write_gguf(plan: Plan, path: Path, outtype: str, progress: Progress | None = None) -> None:
    """Write the plan as a GGUF file at `path` (the caller makes it atomic)."""
    w = GGUFWriter(path, plan.arch)
    try:
        plan.write_kv(w)
        w.add_file_type(OUTTYPES[outtype])
        w.add_quantization_version(2)
        for t in plan.tensors:
            w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        total, done = sum(t.nbytes for t in plan.tensors), 0
        for t in plan.tensors:
            data = t.load()
            if data.shape != t.shape:
                raise invalid(f"tensor {t.name}: expected shape {t.shape}, got {data.shape}")
            out = data.astype(np.float16 if t.qtype == GGMLQuantizationType.F16 else np.float32, copy=False)
            del data
            w.write_tensor_data(np.ascontiguousarray(out))
            done += t.nbytes
            if progress:
                progress(done, total)
        w.flush()
    finally:
        w.close()
