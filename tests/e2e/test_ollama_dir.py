"""CORRAL_MODELS pointed at a models directory written the way Ollama writes it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx

from tests.stack import start_stack, stop_stack


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.replace(":", "-")).write_bytes(data)
    return digest, len(data)


def _ollama_models_dir(root: Path, gguf: Path) -> None:
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    gguf_digest = "sha256:" + hashlib.file_digest(gguf.open("rb"), "sha256").hexdigest()
    target = blobs / gguf_digest.replace(":", "-")
    try:
        os.link(gguf, target)  # same filesystem: no 250 MB copy
    except OSError:
        target.write_bytes(gguf.read_bytes())
    config = {"model_format": "gguf", "model_family": "gemma3", "model_families": ["gemma3"], "model_type": "268.10M",
              "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux"}  # fmt: skip
    config_digest, config_size = _blob(blobs, json.dumps(config, separators=(",", ":")).encode())
    params_digest, params_size = _blob(blobs, b'{"num_ctx":1024,"temperature":0}')
    for model, tag in (("gemma3", "latest"), ("other", "v1")):
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {"mediaType": "application/vnd.ollama.image.model", "digest": gguf_digest, "size": gguf.stat().st_size},
                {"mediaType": "application/vnd.ollama.image.params", "digest": params_digest, "size": params_size},
            ],
        }
        path = root / "manifests" / "registry.ollama.ai" / "library" / model / tag
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(manifest, separators=(",", ":")) + "\n")


def test_an_ollama_models_directory_is_listed_and_served(tmp_path: Path, gemma_path: Path) -> None:
    _ollama_models_dir(tmp_path / "ollama-models", gemma_path)
    stack = start_stack(tmp_path / "stack", CORRAL_MODELS=str(tmp_path / "ollama-models"))
    try:
        names = sorted(m["name"] for m in httpx.get(stack.url + "/api/tags", timeout=30).json()["models"])
        assert names == ["gemma3:latest", "other:v1"]
        for name in names:
            body = {"model": name, "prompt": "Hello", "stream": False, "options": {"num_predict": 4}}
            r = httpx.post(stack.url + "/api/generate", json=body, timeout=300)
            assert r.status_code == 200, r.text
            assert r.json()["eval_count"] == 4
    finally:
        stop_stack(stack)
