"""A models directory written the way Ollama writes it is listed and served."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from services.registry.core import Registry
from tests.ggufs import TinyGGUF

GO_TEMPLATE = "{{ if .System }}{{ .System }}{{ end }}{{ if .Tools }}{{ .Tools }}{{ end }}{{ .Prompt }}"


def _blob(models: Path, data: bytes) -> dict[str, object]:
    hexdigest = hashlib.sha256(data).hexdigest()
    (models / "blobs" / f"sha256-{hexdigest}").write_bytes(data)
    return {"digest": f"sha256:{hexdigest}", "size": len(data)}


def _write_ollama_store(models: Path, tiny: TinyGGUF, host: str) -> bytes:
    (models / "blobs").mkdir(parents=True)
    weights = _blob(models, tiny.path.read_bytes())
    template = _blob(models, GO_TEMPLATE.encode())
    params = _blob(models, b'{"stop":["\\u003c|eot|\\u003e"],"temperature":0.7}\n')
    config = _blob(
        models,
        b'{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"36K",'
        b'"file_type":"F32","architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}\n',
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", **weights},
            {"mediaType": "application/vnd.ollama.image.template", **template},
            {"mediaType": "application/vnd.ollama.image.params", **params},
        ],
    }
    data = json.dumps(manifest, separators=(",", ":")).encode() + b"\n"
    path = models / "manifests" / host / "library" / "tiny" / "latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return data


@pytest.mark.parametrize("host", ["registry.ollama.ai", "localhost:5000"])
async def test_reads_an_ollama_store(tmp_path: Path, tiny: TinyGGUF, host: str) -> None:
    models = tmp_path / "ollama-models"
    manifest_bytes = _write_ollama_store(models, tiny, host)
    reg = await Registry.open(models)
    try:
        listed = await reg.list_models()
        expected_name = "tiny:latest" if host == "registry.ollama.ai" else f"{host}/library/tiny:latest"
        assert [m.name for m in listed] == [expected_name]
        m = await reg.resolve(expected_name.upper())
        assert m.manifest_digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        assert m.full_name == f"{host}/library/tiny:latest"
        assert m.template == GO_TEMPLATE
        assert m.parameters == {"stop": ["<|eot|>"], "temperature": 0.7}
        assert m.details.parameter_size == "36K"
        assert m.capabilities == ("completion", "tools")
        assert m.model_path == str(models / "blobs" / m.model_digest.replace(":", "-"))
        assert (
            listed[0].size
            == m.size
            == sum(la.size for la in m.layers)
            + len((models / "blobs" / json.loads(manifest_bytes)["config"]["digest"].replace(":", "-")).read_bytes())
        )
        # The original manifest bytes are not rewritten.
        manifest_path = next((models / "manifests").rglob("latest"))
        assert manifest_path.read_bytes() == manifest_bytes
    finally:
        await reg.close()
