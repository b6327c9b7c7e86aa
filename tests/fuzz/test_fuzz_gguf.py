"""The GGUF reader on mutated and generated files: a GGUFInfo or INVALID_GGUF, never another
exception, a huge allocation or a long parse."""

from __future__ import annotations

import functools
import struct
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.gguf_meta import GGUFInfo, read_gguf_info
from tests.fuzz.bounds import bounded
from tests.ggufs import gguf_header, gguf_string, kv_string, kv_u32, tensor_info, write_tiny_gguf

HUGE = st.sampled_from([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 62, (1 << 64) - 1])


@functools.cache
def _base() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return write_tiny_gguf(Path(d) / "base.gguf", seed=3, chat_template="{{ messages }}").path.read_bytes()


def _check(data: bytes) -> None:
    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        with bounded(seconds=5):
            try:
                info = read_gguf_info(Path(f.name))
            except CorralError as err:
                assert err.reason == common_pb2.ERROR_REASON_INVALID_GGUF, err
                assert err.message
            else:
                assert isinstance(info, GGUFInfo)
                info.to_json()  # what the index stores


@given(
    cut=st.integers(0, 1 << 20),
    edits=st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=8)), max_size=6),
    words=st.lists(st.tuples(st.integers(0, 4095), HUGE), max_size=3),
)
def test_mutated_file(cut: int, edits: list[tuple[int, bytes]], words: list[tuple[int, int]]) -> None:
    """The header region of a valid file with bytes overwritten, counts blown up, a tail cut."""
    data = bytearray(_base())
    for pos, chunk in edits:
        data[pos : pos + len(chunk)] = chunk
    for pos, value in words:
        data[pos : pos + 8] = struct.pack("<Q", value)
    _check(bytes(data[: len(data) - cut % len(data)]))


@st.composite
def _generated(draw: st.DrawFn) -> bytes:
    n_tensors, n_kv = draw(HUGE), draw(HUGE)
    body = b""
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            body += kv_string(draw(st.text(max_size=20)), draw(st.text(max_size=40)))
        elif kind == 1:
            body += kv_u32(draw(st.text(max_size=20)), draw(st.integers(0, 0xFFFFFFFF)))
        elif kind == 2:  # any value type with any payload
            body += gguf_string(draw(st.text(max_size=10))) + struct.pack("<I", draw(st.integers(0, 20)))
            body += draw(st.binary(max_size=24))
        else:  # an array: element type and count
            body += gguf_string("a") + struct.pack("<IIQ", 9, draw(st.integers(0, 20)), draw(HUGE))
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.lists(HUGE, min_size=0, max_size=5))
        body += tensor_info(draw(st.text(max_size=8)), shape, draw(st.integers(0, 40)), draw(HUGE))
    version = draw(st.sampled_from([1, 2, 3, 4, 0xFFFFFFFF]))
    return gguf_header(n_tensors % (1 << 64), n_kv % (1 << 64), version) + body + draw(st.binary(max_size=64))


@given(_generated())
def test_generated_file(data: bytes) -> None:
    _check(data)


@given(st.binary(max_size=512))
def test_any_bytes(data: bytes) -> None:
    _check(data)
    _check(b"GGUF" + data)
