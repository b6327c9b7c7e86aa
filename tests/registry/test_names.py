from __future__ import annotations

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.names import (
    ModelName,
    decode_host_dir,
    encode_host_dir,
    name_from_dirs,
    parse_name,
    try_parse_name,
)


@pytest.mark.parametrize(
    ("raw", "full"),
    [
        ("gemma3", "registry.ollama.ai/library/gemma3:latest"),
        ("gemma3:270m", "registry.ollama.ai/library/gemma3:270m"),
        ("me/model:v1.2", "registry.ollama.ai/me/model:v1.2"),
        ("example.com/me/model", "example.com/me/model:latest"),
        ("localhost:5000/me/model:tag", "localhost:5000/me/model:tag"),
        ("https://example.com/me/model:q4_K_M", "example.com/me/model:q4_K_M"),
        ("hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M", "hf.co/bartowski/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M"),
        ("_x", "registry.ollama.ai/library/_x:latest"),
    ],
)
def test_parse_fills_defaults(raw: str, full: str) -> None:
    assert parse_name(raw).full() == full


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ":tag",
        "model:",
        "/model",
        "ns/",
        "a//b",
        "..",
        "../etc/passwd",
        "../../x",
        "a/b/c/d",
        "ns.dot/model",  # dots are not allowed in namespaces
        ".hidden",
        "-model",
        "model:.tag",
        "model:-tag",
        "mo del",
        "model:ta/g",
        "model\\x",
        "model\x00",
        "modèle",
        "m" * 81,
        "model:" + "t" * 81,
        "h" * 351 + "/ns/model",
    ],
)
def test_invalid_names(raw: str) -> None:
    assert try_parse_name(raw) is None
    with pytest.raises(CorralError) as info:
        parse_name(raw)
    assert info.value.reason == common_pb2.ERROR_REASON_INVALID_MODEL_NAME
    assert info.value.message == "invalid model name"


def test_display_shortest() -> None:
    assert parse_name("gemma3").display_shortest() == "gemma3:latest"
    assert parse_name("Registry.Ollama.AI/Library/Gemma3:Latest").display_shortest() == "Gemma3:Latest"
    assert parse_name("me/m:1").display_shortest() == "me/m:1"
    assert parse_name("example.com:5000/library/m").display_shortest() == "example.com:5000/library/m:latest"


def test_fold_is_case_insensitive() -> None:
    assert parse_name("GEMMA3:Latest").fold() == parse_name("gemma3").fold()


def test_host_directory_encoding() -> None:
    assert encode_host_dir("localhost:5000") == "localhost%3A5000"
    assert decode_host_dir("localhost%3A5000") == "localhost:5000"
    assert decode_host_dir("localhost%3a5000") == "localhost:5000"
    assert decode_host_dir("localhost:5000") == "localhost:5000"  # written by Ollama


def test_name_from_dirs() -> None:
    assert name_from_dirs("h%3A1", "ns", "m", "t") == ModelName("h:1", "ns", "m", "t")
    assert name_from_dirs("registry.ollama.ai", "library", "m", ".tmp-latest-x") is None
    assert name_from_dirs("h%2F1", "ns", "m", "t") is None
