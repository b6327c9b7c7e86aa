"""A bounded reader for GGUF headers, metadata and tensor infos.

Uploaded files are untrusted, so every count and length read from the file is
checked against a hard limit and against the bytes left in the file before
anything is allocated; a malformed file raises INVALID_GGUF, never a crash.
Only the header is read (not the tensor data), in one forward pass.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from corral.errors import CorralError
from corral.v1 import common_pb2

NOT_GGUF_MESSAGE = "supplied file was not in GGUF format"

MAX_STRING = 16 << 20  # one string value (chat templates are KBs; some files embed tokenizer.json)
MAX_KEY = 64 << 10
MAX_KV = 1 << 16
MAX_ARRAY = 16_000_000  # vocabularies and merges reach a few million entries
MAX_TENSORS = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 20
KEEP_ARRAY = 64  # longer arrays are elided from `kv` (and only their length is kept)
_CHUNK = 1 << 20

_MAGIC = b"GGUF"
# GGUFValueType -> (struct format, size) for fixed-size scalars.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}  # fmt: skip
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6


class _Malformed(Exception):
    pass


@dataclass
class TensorInfo:
    name: str
    type: str  # GGML type name, e.g. "Q4_K"
    shape: list[int]
    size: int = 0  # bytes of data; 0 for a type newer than the gguf package


@dataclass
class GGUFInfo:
    version: int
    architecture: str
    general_type: str  # "model", "adapter", "mmproj"/"projector", ...
    parameter_count: int
    file_type: int | None
    file_type_name: str  # Ollama spelling, e.g. "Q4_K_M"; "unknown" when absent
    context_length: int
    embedding_length: int
    block_count: int
    head_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    chat_template: str
    has_pooling_type: bool
    kv: dict[str, Any] = field(default_factory=dict)  # arrays longer than KEEP_ARRAY are []
    elided_arrays: dict[str, int] = field(default_factory=dict)  # their real lengths
    tensors: list[TensorInfo] = field(default_factory=list)
    # Special-token texts for chat templates ("<bos>"); filled from the token list.
    bos_token: str = ""
    eos_token: str = ""
    add_bos_token: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> GGUFInfo:
        obj = json.loads(text)
        obj["tensors"] = [TensorInfo(**t) for t in obj.get("tensors", [])]
        return cls(**obj)


class _Cursor:
    """Forward-only buffered reads that never run past the end of the file."""

    def __init__(self, f: BinaryIO, size: int, start: int = 0) -> None:
        self._f, self.size = f, size
        self._buf, self._pos, self._start = b"", 0, start

    @property
    def offset(self) -> int:
        return self._start + self._pos

    def _need(self, n: int) -> None:
        if len(self._buf) - self._pos >= n:
            return
        if self.offset + n > self.size:
            raise _Malformed("unexpected end of file")
        rest = self._buf[self._pos :]
        self._start, self._pos = self.offset, 0
        self._buf = rest + self._f.read(max(n - len(rest), _CHUNK))
        if len(self._buf) < n:
            raise _Malformed("unexpected end of file")

    def read(self, n: int) -> bytes:
        self._need(n)
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def unpack(self, fmt: str, size: int) -> Any:
        self._need(size)
        value = struct.unpack_from(fmt, self._buf, self._pos)[0]
        self._pos += size
        return value

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def skip(self, n: int) -> None:
        if len(self._buf) - self._pos >= n:
            self._pos += n
            return
        target = self.offset + n
        if target > self.size:
            raise _Malformed("unexpected end of file")
        self._f.seek(target)
        self._buf, self._pos, self._start = b"", 0, target

    def string(self, limit: int = MAX_STRING, *, keep: bool = True) -> str:
        n = self.u64()
        if n > limit or self.offset + n > self.size:
            raise _Malformed(f"string of {n} bytes is too long")
        if not keep:
            self.skip(n)
            return ""
        return self.read(n).decode("utf-8", errors="replace")


def _float32(value: float) -> float:
    # The shortest decimal that round-trips as float32, as Go prints it (1e-06, not 9.99e-07).
    return float(str(np.float32(value))) if math.isfinite(value) else value


def _value(cur: _Cursor, vtype: int, *, keep: bool, depth: int = 0) -> tuple[Any, int | None]:
    """(value, elided length); arrays longer than KEEP_ARRAY come back as ([], length)."""
    if vtype in _SCALARS:
        fmt, size = _SCALARS[vtype]
        v = cur.unpack(fmt, size)
        return (_float32(v) if vtype == _FLOAT32 else v), None
    if vtype == _STRING:
        return cur.string(keep=keep), None
    if vtype != _ARRAY or depth > 1:
        raise _Malformed(f"unknown value type {vtype}")
    etype, count = cur.u32(), cur.u64()
    min_size = _SCALARS[etype][1] if etype in _SCALARS else 8
    if count > MAX_ARRAY or cur.offset + count * min_size > cur.size:
        raise _Malformed(f"array of {count} elements is too long")
    keep_items = keep and count <= KEEP_ARRAY
    if etype in _SCALARS and not keep_items:
        cur.skip(count * _SCALARS[etype][1])
    else:
        items = [_value(cur, etype, keep=keep_items, depth=depth + 1)[0] for _ in range(count)]
        if keep_items:
            return items, None
    return [], count


def _tensor_bytes(ggml_type: int, shape: list[int]) -> int | None:
    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None  # a type newer than our gguf package: offsets are still checked
    if shape[0] % block:
        raise _Malformed("tensor row size is not a multiple of its block size")
    return math.prod(shape) // block * type_size


def file_type_name(file_type: int | None) -> str:
    """Ollama's spelling of general.file_type: 15 -> "Q4_K_M", 1 -> "F16"."""
    if file_type is None:
        return "unknown"
    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return "unknown"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def _token_texts(f: BinaryIO, size: int, offset: int, ids: set[int]) -> dict[int, str]:
    """Texts of a few token ids, read in a second pass over tokenizer.ggml.tokens (bounded like the first)."""
    f.seek(offset)
    cur = _Cursor(f, size, start=offset)
    etype, count = cur.u32(), cur.u64()
    if etype != _STRING or not ids:
        return {}
    out: dict[int, str] = {}
    for i in range(min(count, max(ids) + 1)):
        text = cur.string(keep=i in ids)
        if i in ids:
            out[i] = text
    return out


def _parse(cur: _Cursor) -> tuple[GGUFInfo, int]:
    """The summary and the offset of the token list's value (0 when absent)."""
    if cur.size < 4 or cur.read(4) != _MAGIC:
        raise CorralError(common_pb2.ERROR_REASON_INVALID_GGUF, NOT_GGUF_MESSAGE)
    version = cur.u32()
    if version not in (2, 3):
        raise _Malformed(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.u64(), cur.u64()
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise _Malformed(f"too many tensors ({n_tensors}) or metadata entries ({n_kv})")
    kv: dict[str, Any] = {}
    elided: dict[str, int] = {}
    tokens_offset = 0
    for _ in range(n_kv):
        key = cur.string(MAX_KEY)
        vtype = cur.u32()
        if key == "tokenizer.ggml.tokens":
            tokens_offset = cur.offset
        value, length = _value(cur, vtype, keep=True)
        kv[key] = value
        if length is not None:
            elided[key] = length
    alignment = kv.get("general.alignment", 32)
    if not isinstance(alignment, int) or not 0 < alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
        raise _Malformed("invalid general.alignment")
    infos: list[tuple[TensorInfo, int, int | None]] = []
    for _ in range(n_tensors):
        name = cur.string(MAX_KEY)
        n_dims = cur.u32()
        if not 0 < n_dims <= MAX_DIMS:
            raise _Malformed(f"tensor {name!r} has {n_dims} dimensions")
        shape = [cur.u64() for _ in range(n_dims)]
        if any(d >= 1 << 48 for d in shape) or math.prod(shape) >= 1 << 56:
            raise _Malformed(f"tensor {name!r} is too large")
        ggml_type, offset = cur.u32(), cur.u64()
        try:
            type_name = GGMLQuantizationType(ggml_type).name
        except ValueError:
            type_name = str(ggml_type)
        nbytes = _tensor_bytes(ggml_type, shape)
        infos.append((TensorInfo(name, type_name, shape, nbytes or 0), offset, nbytes))
    data_start = -(-cur.offset // alignment) * alignment
    for info, offset, nbytes in infos:
        if offset % alignment or data_start + offset + (nbytes or 0) > cur.size:
            raise _Malformed(f"tensor {info.name!r} lies outside the file")
    return _summarise(version, kv, elided, [t for t, _, _ in infos]), tokens_offset


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return max(value)  # per-layer values (e.g. head counts of OpenELM)
    return 0


def _summarise(version: int, kv: dict[str, Any], elided: dict[str, int], tensors: list[TensorInfo]) -> GGUFInfo:
    arch = str(kv.get("general.architecture", ""))
    params = _int(kv.get("general.parameter_count"))
    if params <= 0:
        params = sum(math.prod(t.shape) for t in tensors)
    file_type = kv.get("general.file_type")
    file_type = file_type if isinstance(file_type, int) and not isinstance(file_type, bool) else None
    template = kv.get("tokenizer.chat_template", "")
    return GGUFInfo(
        version=version,
        architecture=arch,
        general_type=str(kv.get("general.type", "model")),
        parameter_count=params,
        file_type=file_type,
        file_type_name=file_type_name(file_type),
        context_length=_int(kv.get(f"{arch}.context_length")),
        embedding_length=_int(kv.get(f"{arch}.embedding_length")),
        block_count=_int(kv.get(f"{arch}.block_count")),
        head_count=_int(kv.get(f"{arch}.attention.head_count")),
        head_count_kv=_int(kv.get(f"{arch}.attention.head_count_kv")),
        key_length=_int(kv.get(f"{arch}.attention.key_length")),
        value_length=_int(kv.get(f"{arch}.attention.value_length")),
        chat_template=template if isinstance(template, str) else "",
        has_pooling_type=f"{arch}.pooling_type" in kv,
        kv=kv,
        elided_arrays=elided,
        tensors=tensors,
    )


def _add_special_tokens(info: GGUFInfo, f: BinaryIO, size: int, tokens_offset: int) -> None:
    ids = {k: info.kv.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
    wanted = {v for v in ids.values() if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_ARRAY}
    texts = _token_texts(f, size, tokens_offset, wanted)
    info.bos_token = texts.get(ids["bos"], "") if isinstance(ids["bos"], int) else ""
    info.eos_token = texts.get(ids["eos"], "") if isinstance(ids["eos"], int) else ""
    add_bos = info.kv.get("tokenizer.ggml.add_bos_token")
    info.add_bos_token = add_bos if isinstance(add_bos, bool) else True


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse a GGUF file's header; raises INVALID_GGUF for anything malformed."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            info, tokens_offset = _parse(_Cursor(f, size))
            if tokens_offset:
                _add_special_tokens(info, f, size, tokens_offset)
            return info
    except _Malformed as exc:
        raise CorralError(common_pb2.ERROR_REASON_INVALID_GGUF, f"invalid GGUF file: {exc}") from None
    except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise CorralError(common_pb2.ERROR_REASON_INVALID_GGUF, f"invalid GGUF file: {exc}") from None
