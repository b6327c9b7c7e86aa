from __future__ import annotations

import json

import pytest

from services.registry.manifest import (
    CONFIG_MEDIA_TYPE,
    MEDIA_MODEL,
    Layer,
    Manifest,
    ManifestError,
    go_json,
    human_number,
)

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (268_098_176, "268.10M"),
        (3_212_749_888, "3.2B"),
        (8_000_000_000, "8B"),
        (7_000_000, "7M"),
        (36_064, "36K"),
        (999, "999"),
        (0, "0"),
    ],
)
def test_human_number(n: int, text: str) -> None:
    assert human_number(n) == text


def test_manifest_bytes_are_go_style() -> None:
    m = Manifest(config=Layer(CONFIG_MEDIA_TYPE, D1, 10), layers=(Layer(MEDIA_MODEL, D2, 20, from_="a:b"),))
    data = m.to_bytes()
    assert data == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"' + D1.encode() + b'",'
        b'"size":10},"layers":[{"mediaType":"application/vnd.ollama.image.model","digest":"' + D2.encode() + b'",'
        b'"size":20,"from":"a:b"}]}\n'
    )
    assert Manifest.from_bytes(data) == m
    assert m.size == 30


def test_go_json_escapes_html() -> None:
    assert go_json({"stop": ["<|eot|>", "a&b"]}) == b'{"stop":["\\u003c|eot|\\u003e","a\\u0026b"]}\n'
    assert json.loads(go_json({"stop": ["<|eot|>"]})) == {"stop": ["<|eot|>"]}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"config":{"digest":"sha256:../../etc","size":1},"layers":[]}',
        b'{"config":{"digest":"' + D1.encode() + b'","size":-1},"layers":[]}',
        b'{"config":{"digest":"' + D1.encode() + b'","size":1},"layers":[{"digest":"x"}]}',
        b'{"config":{"digest":"' + D1.encode() + b'","size":1},"layers":{}}',
    ],
)
def test_rejects_bad_manifests(data: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(data)
