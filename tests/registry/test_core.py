from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.core import Registry
from services.registry.create import CreateRequest
from services.registry.manifest import MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM, MEDIA_TEMPLATE, Manifest
from tests.ggufs import TinyGGUF, write_not_gguf, write_tiny_gguf
from tests.registry.helpers import JINJA_WITH_TOOLS, all_files, create, file_chunks, read_bytes, touch, upload

R = common_pb2


async def test_create_from_files_then_resolve(registry: Registry, tiny: TinyGGUF) -> None:
    digest = await upload(registry, tiny)
    events = await create(registry, CreateRequest(name="Tiny", files={"tiny.gguf": digest}))
    assert [e.status for e in events] == [
        "parsing GGUF",
        f"using existing layer {digest}",
        "writing manifest",
        "success",
    ]

    m = await registry.resolve("tiny:LATEST")  # case-insensitive
    assert m.name == "Tiny:latest"
    assert m.full_name == "registry.ollama.ai/library/Tiny:latest"
    manifest_path = registry.store.manifests_dir / "registry.ollama.ai/library/Tiny/latest"
    raw = manifest_path.read_bytes()
    assert m.manifest_digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert raw.endswith(b"}\n") and b" " not in raw
    manifest = Manifest.from_bytes(raw)
    assert m.size == tiny.size + manifest.config.size
    assert m.modified_at_ns == manifest_path.stat().st_mtime_ns
    assert [(la.media_type, la.digest, la.from_) for la in m.layers] == [(MEDIA_MODEL, digest, "")]
    assert m.model_digest == digest
    assert Path(m.model_path).is_absolute() and read_bytes(m.model_path) == read_bytes(tiny.path)
    assert m.details.format == "gguf"
    assert m.details.family == "llama"
    assert m.details.families == ("llama",)
    assert m.details.parameter_size == "36K"
    assert m.details.quantization_level == "F32"
    assert m.details.parent_model == ""
    assert m.gguf_chat_template == JINJA_WITH_TOOLS
    assert m.context_length_train == 256
    assert m.capabilities == ("completion", "tools")
    assert (m.template, m.system, m.parameters) == ("", "", {})

    config = json.loads(registry.store.blob_path(manifest.config.digest).read_bytes())
    assert config["model_format"] == "gguf"
    assert config["model_type"] == "36K"
    assert config["file_type"] == "F32"
    assert config["rootfs"] == {"type": "layers", "diff_ids": [digest]}


async def test_create_from_parent_with_system_template_params(registry: Registry, tiny: TinyGGUF) -> None:
    digest = await upload(registry, tiny)
    await create(
        registry,
        CreateRequest(
            name="base",
            files={"m.gguf": digest},
            system="You are base.",
            parameters={"temperature": 0.5, "stop": ["<|end|>"], "num_ctx": 4096.0},
        ),
    )
    events = await create(
        registry,
        CreateRequest(
            name="me/child:v1",
            from_="BASE",
            system="You are a pirate.",
            template="{{ .System }}{{ .Prompt }}{{ if .Suffix }}{{ .Suffix }}{{ end }}",
            parameters={"temperature": 0.9, "top_k": 10.0},
            license=("MIT",),
        ),
    )
    statuses = [e.status for e in events]
    assert statuses[0] == f"using existing layer {digest}"
    assert sum(s.startswith("creating new layer") for s in statuses) == 4  # template, system, license, params
    assert statuses[-2:] == ["writing manifest", "success"]

    child = await registry.resolve("me/child:v1")
    assert child.name == "me/child:v1"
    assert child.system == "You are a pirate."
    assert child.parameters == {"num_ctx": 4096, "stop": ["<|end|>"], "temperature": 0.9, "top_k": 10}
    assert child.licenses == ("MIT",)
    assert child.details.parent_model == "base:latest"
    assert child.model_digest == digest
    assert "insert" in child.capabilities
    assert next(la.media_type for la in child.layers) == MEDIA_MODEL
    assert child.layers[0].from_ == "base:latest"
    params_layer = next(la for la in child.layers if la.media_type == MEDIA_PARAMS)
    params_blob = registry.store.blob_path(params_layer.digest).read_bytes()
    assert params_blob == b'{"num_ctx":4096,"stop":["\\u003c|end|\\u003e"],"temperature":0.9,"top_k":10}\n'
    # The parent is untouched.
    base = await registry.resolve("base")
    assert base.system == "You are base." and base.template == ""

    # An empty system removes the parent's layer; others are inherited.
    await create(registry, CreateRequest(name="bare", from_="me/child:v1", system=""))
    bare = await registry.resolve("bare")
    assert bare.system == "" and bare.template == child.template
    assert MEDIA_SYSTEM not in {la.media_type for la in bare.layers}
    assert MEDIA_TEMPLATE in {la.media_type for la in bare.layers}
    assert bare.details.parent_model == "me/child:v1"


async def test_list_newest_first(registry: Registry, tiny: TinyGGUF) -> None:
    digest = await upload(registry, tiny)
    for name in ("a", "b", "c"):
        await create(registry, CreateRequest(name=name, files={"m.gguf": digest}))
    # Make "a" the newest by touching its manifest (written by someone else).
    path = registry.store.manifests_dir / "registry.ollama.ai/library/a/latest"
    future = path.stat().st_mtime_ns + 10**9
    os.utime(path, ns=(future, future))
    models = await registry.list_models()
    assert next(m.name for m in models) == "a:latest"
    assert {m.name for m in models} == {"a:latest", "b:latest", "c:latest"}
    assert models[0].modified_at_ns == future
    assert all(m.model_digest == digest and m.details.family == "llama" for m in models)


async def test_create_replaces_existing_model(registry: Registry, tiny: TinyGGUF) -> None:
    digest = await upload(registry, tiny)
    await create(registry, CreateRequest(name="m", files={"m.gguf": digest}, system="one"))
    await create(registry, CreateRequest(name="M", files={"m.gguf": digest}, system="two"))
    models = await registry.list_models()
    assert [(m.name, (await registry.resolve(m.name)).system) for m in models] == [("m:latest", "two")]


@pytest.mark.parametrize(
    ("req", "reason", "message"),
    [
        (CreateRequest(name="bad name!", files={"a": "x"}), R.ERROR_REASON_INVALID_MODEL_NAME, "invalid model name"),
        (CreateRequest(name="m"), R.ERROR_REASON_INVALID_ARGUMENT, "neither 'from' or 'files' was specified"),
        (
            CreateRequest(name="m", files={"/etc/passwd": "x"}),
            R.ERROR_REASON_INVALID_PATH,
            "file path must be relative",
        ),
        (CreateRequest(name="m", files={"../m.gguf": "x"}), R.ERROR_REASON_INVALID_PATH, "file path must be relative"),
        (CreateRequest(name="m", files={"a/../../b": "x"}), R.ERROR_REASON_INVALID_PATH, "file path must be relative"),
        (CreateRequest(name="m", files={"C:\\x": "x"}), R.ERROR_REASON_INVALID_PATH, "file path must be relative"),
        (CreateRequest(name="m", files={"m.gguf": ""}), R.ERROR_REASON_INVALID_DIGEST, "invalid digest format"),
        (
            CreateRequest(name="m", files={"m.gguf": "sha256:../../../etc/passwd"}),
            R.ERROR_REASON_INVALID_DIGEST,
            "invalid digest format",
        ),
        (
            CreateRequest(name="m", files={"m.gguf": "sha256:" + "0" * 64}),
            R.ERROR_REASON_BLOB_NOT_FOUND,
            f'blob "sha256:{"0" * 64}" not found',
        ),
        (CreateRequest(name="m", from_="nope"), R.ERROR_REASON_MODEL_NOT_FOUND, "model 'nope' not found"),
        (CreateRequest(name="m", from_="../x"), R.ERROR_REASON_INVALID_MODEL_NAME, "invalid model name"),
        (
            CreateRequest(name="m", adapters={"a": "sha256:" + "0" * 64, "b": "sha256:" + "1" * 64}, from_="x"),
            R.ERROR_REASON_INVALID_ARGUMENT,
            "only one adapter is currently supported",
        ),
    ],
)
async def test_create_errors(registry: Registry, req: CreateRequest, reason: int, message: str) -> None:
    with pytest.raises(CorralError) as info:
        await create(registry, req)
    assert (info.value.reason, info.value.message) == (reason, message)
    assert not any(registry.store.manifests_dir.rglob("*"))


async def test_create_from_non_gguf_blob(registry: Registry, tmp_path: Path) -> None:
    path = write_not_gguf(tmp_path / "x.bin")
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    await registry.write_blob(digest, file_chunks(path))
    with pytest.raises(CorralError) as info:
        await create(registry, CreateRequest(name="m", files={"x.bin": digest}))
    assert info.value.reason == R.ERROR_REASON_INVALID_GGUF
    assert info.value.message == "supplied file was not in GGUF format"


async def test_quantize_types(registry: Registry, tiny: TinyGGUF) -> None:
    digest = await upload(registry, tiny)
    with pytest.raises(CorralError, match="unsupported quantization type q3 - supported types are"):
        await create(registry, CreateRequest(name="m", files={"m.gguf": digest}, quantize="q3"))
    # Quantizing itself is covered in test_convert*.py; an already quantized model is refused.
    await create(registry, CreateRequest(name="m", files={"m.gguf": digest}, quantize="q8_0"))
    with pytest.raises(CorralError, match="only supported for F16, BF16 and F32"):
        await create(registry, CreateRequest(name="m2", from_="m", quantize="q4_K_M"))


async def test_embedding_capability(registry: Registry, tmp_path: Path) -> None:
    g = write_tiny_gguf(tmp_path / "embed.gguf", pooling_type=1)
    await upload(registry, g)
    await create(registry, CreateRequest(name="embed", files={"e.gguf": g.digest}))
    assert (await registry.resolve("embed")).capabilities == ("embedding",)


async def test_resolve_errors(registry: Registry) -> None:
    with pytest.raises(CorralError) as info:
        await registry.resolve("missing")
    assert (info.value.reason, info.value.message) == (R.ERROR_REASON_MODEL_NOT_FOUND, "model 'missing' not found")
    with pytest.raises(CorralError) as info:
        await registry.resolve("../../etc/passwd")
    assert info.value.reason == R.ERROR_REASON_INVALID_MODEL_NAME


async def test_write_blob_existing_and_mismatch(registry: Registry, tiny: TinyGGUF) -> None:
    first = await registry.write_blob(tiny.digest, file_chunks(tiny.path))
    assert (first.created, first.size) == (True, tiny.size)
    again = await registry.write_blob(tiny.digest.replace(":", "-"), file_chunks(tiny.path))
    assert (again.created, again.size) == (False, tiny.size)
    assert await registry.stat_blob(tiny.digest) == tiny.size
    wrong = "sha256:" + "f" * 64
    with pytest.raises(CorralError) as info:
        await registry.write_blob(wrong, file_chunks(tiny.path, size=1000))
    assert info.value.reason == R.ERROR_REASON_DIGEST_MISMATCH
    assert await registry.stat_blob(wrong) is None
    assert all_files(registry.store.blobs_dir) == {tiny.digest.replace(":", "-")}


async def test_cancelled_upload_leaves_nothing(registry: Registry) -> None:
    gate = asyncio.Event()

    async def slow() -> object:
        yield b"partial data"
        await gate.wait()
        yield b"never"

    task = asyncio.create_task(registry.write_blob("sha256:" + "e" * 64, slow()))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all_files(registry.store.blobs_dir) == set()


async def test_concurrent_resolves_and_creates(registry: Registry, tiny: TinyGGUF) -> None:
    digest = await upload(registry, tiny)
    await create(registry, CreateRequest(name="m", files={"m.gguf": digest}))
    touch(registry.store.manifests_dir / "registry.ollama.ai/library/m/latest")  # every resolve refreshes
    resolves = asyncio.gather(*(registry.resolve("m") for _ in range(8)))
    creates = asyncio.gather(
        *(create(registry, CreateRequest(name=f"c{i}", from_="m", system=str(i))) for i in range(4))
    )
    resolved, _, _ = await asyncio.gather(resolves, creates, registry.list_models())
    assert {r.name for r in resolved} == {"m:latest"}
    assert len(await registry.list_models()) == 5
