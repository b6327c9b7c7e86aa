from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.gguf_meta import GGUFInfo, file_type_name, read_gguf_info
from tests import ggufs
from tests.ggufs import TinyGGUF, write_tiny_gguf
from tests.registry.helpers import JINJA_WITH_TOOLS


def test_reads_tiny_model(tiny: TinyGGUF) -> None:
    info = read_gguf_info(tiny.path)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.general_type == "model"
    assert info.parameter_count == tiny.parameter_count  # summed from the tensor infos
    assert info.file_type == 0
    assert info.file_type_name == "F32"
    assert (info.context_length, info.embedding_length, info.block_count) == (256, 32, 2)
    assert (info.head_count, info.head_count_kv) == (4, 2)
    assert info.chat_template == JINJA_WITH_TOOLS
    assert not info.has_pooling_type
    assert info.kv["general.name"] == "tiny"
    assert info.kv["llama.attention.layer_norm_rms_epsilon"] == 1e-05  # float32 printed shortest
    assert info.kv["tokenizer.ggml.tokens"] == []  # elided
    assert info.elided_arrays["tokenizer.ggml.tokens"] == tiny.vocab_size
    assert {t.name for t in info.tensors} >= {"token_embd.weight", "blk.1.ffn_up.weight"}
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert (embd.type, embd.shape) == ("F32", [32, tiny.vocab_size])
    assert GGUFInfo.from_json(info.to_json()) == info


def test_explicit_parameter_count_and_pooling(tmp_path: Path) -> None:
    g = write_tiny_gguf(
        tmp_path / "e.gguf", parameter_count=True, pooling_type=1, extra_kv={"general.parameter_count2": 5}
    )
    info = read_gguf_info(g.path)
    assert info.parameter_count == g.parameter_count
    assert info.has_pooling_type
    assert info.chat_template == ""


def test_file_type_names() -> None:
    assert file_type_name(15) == "Q4_K_M"
    assert file_type_name(1) == "F16"
    assert file_type_name(32) == "BF16"
    assert file_type_name(7) == "Q8_0"
    assert file_type_name(None) == "unknown"
    assert file_type_name(9999) == "unknown"


BROKEN: list[tuple[str, Callable[[Path], Path], str]] = [
    ("not_gguf", ggufs.write_not_gguf, "supplied file was not in GGUF format"),
    ("huge_string", ggufs.write_huge_string_length, "too long"),
    ("huge_tensor_count", ggufs.write_huge_tensor_count, "too many tensors"),
    ("huge_kv_count", ggufs.write_huge_kv_count, "too many"),
    ("huge_array", ggufs.write_huge_array, "too long"),
    ("bad_offset", ggufs.write_bad_tensor_offset, "outside the file"),
    ("huge_dims", ggufs.write_huge_tensor_dims, "too large"),
    ("bad_version", ggufs.write_bad_version, "unsupported GGUF version"),
]


@pytest.mark.parametrize(("kind", "writer", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_malformed_files_raise_invalid_gguf(
    tmp_path: Path, kind: str, writer: Callable[[Path], Path], message: str
) -> None:
    path = writer(tmp_path / kind)
    with pytest.raises(CorralError) as info:
        read_gguf_info(path)
    assert info.value.reason == common_pb2.ERROR_REASON_INVALID_GGUF
    assert message in info.value.message


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(CorralError, match="not in GGUF format"):
        read_gguf_info(tmp_path / "empty")


def test_every_truncation_is_rejected(tiny: TinyGGUF, tmp_path: Path) -> None:
    data = tiny.path.read_bytes()
    header_end = 8000  # past the vocabulary into the tensor infos
    cut_points = [*range(64), *range(64, header_end, 97), len(data) - 1]
    for keep in cut_points:
        path = tmp_path / "cut"
        path.write_bytes(data[:keep])
        with pytest.raises(CorralError) as info:
            read_gguf_info(path)
        assert info.value.reason == common_pb2.ERROR_REASON_INVALID_GGUF, keep
