"""A bounded, lazy reader for safetensors files.

A safetensors file is an 8-byte little-endian header length, a JSON header
({name: {dtype, shape, data_offsets}}) and the raw tensor bytes. Uploads are
untrusted, so the header size, tensor count, ranks, dimensions and offsets are
checked against limits and the file size before anything is allocated; tensor
data is read one tensor at a time (seek + read), never the whole file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_HEADER = 100 << 20  # real headers are KBs to a few MBs
MAX_TENSORS = 1 << 17
MAX_DIMS = 8

# safetensors dtype -> (numpy dtype it is read as, bytes per element). BF16 is read
# as raw uint16 and widened by `to_float32`, numpy having no bfloat16.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("?"), 1),
}


class SafetensorsError(ValueError):
    pass


@dataclass(frozen=True)
class TensorRef:
    name: str
    dtype: str  # safetensors spelling: "F32", "BF16", ...
    shape: tuple[int, ...]
    path: Path
    offset: int  # absolute offset of the data in the file
    nbytes: int

    def read(self) -> np.ndarray:
        """This tensor's data, as stored (BF16 as uint16); only its bytes are read."""
        np_dtype, _ = DTYPES[self.dtype]
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = np.fromfile(f, dtype=np_dtype, count=self.nbytes // np_dtype.itemsize)
        if data.nbytes != self.nbytes:
            raise SafetensorsError(f"{self.path.name}: tensor {self.name} is truncated")
        return data.reshape(self.shape)


def to_float32(ref: TensorRef, data: np.ndarray) -> np.ndarray:
    """Float tensors as float32 (BF16 widened bit-exactly)."""
    if ref.dtype == "BF16":
        return (data.astype(np.uint32) << 16).view(np.float32)
    if ref.dtype in ("F32", "F16", "F64"):
        return data.astype(np.float32, copy=False)
    raise SafetensorsError(f"tensor {ref.name} has non-float type {ref.dtype}")


def read_header(path: Path) -> dict[str, TensorRef]:
    """The tensors of one file, checked against the file's size."""
    size = os.path.getsize(path)
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise SafetensorsError(f"{path.name}: not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise SafetensorsError(f"{path.name}: bad safetensors header length {n}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SafetensorsError(f"{path.name}: safetensors header is not JSON") from exc
    if not isinstance(header, dict) or len(header) > MAX_TENSORS + 1:
        raise SafetensorsError(f"{path.name}: bad safetensors header")
    base, data_size = 8 + n, size - 8 - n
    out: dict[str, TensorRef] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        out[name] = _entry(path, name, entry, base, data_size)
    return out


def _entry(path: Path, name: str, entry: object, base: int, data_size: int) -> TensorRef:
    def bad(why: str) -> SafetensorsError:
        return SafetensorsError(f"{path.name}: tensor {name!r}: {why}")

    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        raise bad(f"unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise bad("bad shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape):
        raise bad("bad dimension")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise bad("bad data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise bad("data_offsets outside the file")
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if end - begin != nbytes:
        raise bad(f"{end - begin} bytes for shape {shape} of {dtype}")
    return TensorRef(name, dtype, tuple(shape), path, base + begin, nbytes)


def read_tensors(paths: list[Path]) -> dict[str, TensorRef]:
    """All tensors of a (possibly sharded) model; a name in two shards is an error."""
    out: dict[str, TensorRef] = {}
    for path in sorted(paths):
        for name, ref in read_header(path).items():
            if name in out:
                raise SafetensorsError(f"tensor {name!r} appears in more than one file")
            out[name] = ref
    return out
