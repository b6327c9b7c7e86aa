"""RegistryService through a real gRPC server on a loopback port."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from corral.errors import CorralError, from_rpc_error
from corral.grpc_server import GrpcService, channel
from corral.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.registry.core import Registry
from services.registry.servicer import register
from tests.ggufs import TinyGGUF
from tests.registry.helpers import all_files, is_file, paths_below

R = common_pb2
CHUNK = 64 << 10


@pytest.fixture
async def stub(registry: Registry) -> AsyncIterator[registry_pb2_grpc.RegistryServiceStub]:
    service = GrpcService("registry", "127.0.0.1:0", register(registry))
    await service.start()
    ch = channel(f"127.0.0.1:{service.port}")
    try:
        yield registry_pb2_grpc.RegistryServiceStub(ch)
    finally:
        await ch.close()
        await service.stop(grace=0)


def _upload_messages(digest: str, data: bytes) -> Iterator[registry_pb2.UploadBlobRequest]:
    yield registry_pb2.UploadBlobRequest(digest=digest, chunk=data[:CHUNK])
    for i in range(CHUNK, len(data), CHUNK):
        yield registry_pb2.UploadBlobRequest(chunk=data[i : i + CHUNK])


async def _error(call: object) -> CorralError:
    with pytest.raises(grpc.RpcError) as info:
        await call  # type: ignore[misc]
    return from_rpc_error(info.value)


async def _create(stub: registry_pb2_grpc.RegistryServiceStub, **kwargs: Any) -> list[str]:
    return [r.status async for r in stub.CreateModel(registry_pb2.CreateModelRequest(**kwargs))]


async def _create_error(stub: registry_pb2_grpc.RegistryServiceStub, **kwargs: Any) -> CorralError:
    with pytest.raises(grpc.RpcError) as info:
        await _create(stub, **kwargs)
    return from_rpc_error(info.value)


async def test_upload_create_resolve_list(
    stub: registry_pb2_grpc.RegistryServiceStub, registry: Registry, tiny: TinyGGUF
) -> None:
    data = tiny.path.read_bytes()
    stat = await stub.StatBlob(registry_pb2.StatBlobRequest(digest=tiny.digest))
    assert not stat.exists
    up = await stub.UploadBlob(_upload_messages(tiny.digest, data))
    assert (up.created, up.size_bytes) == (True, len(data))
    again = await stub.UploadBlob(_upload_messages(tiny.digest.replace(":", "-"), data))
    assert (again.created, again.size_bytes) == (False, len(data))
    stat = await stub.StatBlob(registry_pb2.StatBlobRequest(digest=tiny.digest.replace(":", "-")))
    assert (stat.exists, stat.size_bytes) == (True, len(data))

    statuses = await _create(stub, name="tiny", files={"tiny.gguf": tiny.digest})
    assert statuses == ["parsing GGUF", f"using existing layer {tiny.digest}", "writing manifest", "success"]

    params = struct_pb2.Struct()
    params.update({"temperature": 0.25, "stop": ["<|x|>"]})
    statuses = await _create(
        stub,
        name="pirate",
        system="Arr.",
        parameters=params,
        **{"from": "tiny"},  # "from" is a keyword
    )
    assert statuses[-1] == "success"

    resp = await stub.ResolveModel(registry_pb2.ResolveModelRequest(name="PIRATE:Latest"))
    m = resp.model
    assert (m.name, m.full_name) == ("pirate:latest", "registry.ollama.ai/library/pirate:latest")
    assert m.system == "Arr."
    assert json_format.MessageToDict(m.parameters) == {"temperature": 0.25, "stop": ["<|x|>"]}
    assert m.details.parent_model == "tiny:latest"
    assert m.details.family == "llama" and m.details.format == "gguf"
    assert m.details.parameter_size == "36K" and m.details.quantization_level == "F32"
    assert m.model_digest == tiny.digest and is_file(m.model_path)
    assert m.layers[0].media_type == "application/vnd.ollama.image.model"
    assert getattr(m.layers[0], "from") == "tiny:latest"
    assert m.context_length_train == 256
    assert list(m.capabilities) == ["completion", "tools"]
    assert m.gguf_chat_template
    raw = (registry.store.manifests_dir / "registry.ollama.ai/library/pirate/latest").read_bytes()
    assert m.manifest_digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert m.modified_at.ToNanoseconds() > 0
    assert m.size_bytes > tiny.size

    listed = await stub.ListModels(registry_pb2.ListModelsRequest())
    assert [x.name for x in listed.models] == ["pirate:latest", "tiny:latest"]


async def test_upload_digest_mismatch(stub: registry_pb2_grpc.RegistryServiceStub, registry: Registry) -> None:
    data = b"some bytes" * 10_000
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    err = await _error(stub.UploadBlob(_upload_messages(wrong, data)))
    assert err.code == grpc.StatusCode.DATA_LOSS
    assert err.reason == R.ERROR_REASON_DIGEST_MISMATCH
    assert err.message == f'digest mismatch, expected "{wrong}", got "sha256:{hashlib.sha256(data).hexdigest()}"'
    assert all_files(registry.store.blobs_dir) == set()


@pytest.mark.parametrize("digest", ["", "sha256:../../../../tmp/evil", "../" * 8 + "etc/passwd", "sha256:" + "0" * 63])
async def test_upload_invalid_digest(
    stub: registry_pb2_grpc.RegistryServiceStub, registry: Registry, digest: str
) -> None:
    err = await _error(stub.UploadBlob(_upload_messages(digest, b"evil")))
    assert (err.code, err.reason, err.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        R.ERROR_REASON_INVALID_DIGEST,
        "invalid digest format",
    )
    err = await _error(stub.StatBlob(registry_pb2.StatBlobRequest(digest=digest)))
    assert err.reason == R.ERROR_REASON_INVALID_DIGEST
    dbs = {f"{db}{tail}" for db in ("index.db", "responses.db") for tail in ("", "-wal", "-shm")}
    assert all_files(registry.store.root) <= dbs


async def test_upload_empty_stream(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    err = await _error(stub.UploadBlob(iter(())))
    assert err.reason == R.ERROR_REASON_INVALID_DIGEST


async def test_path_traversal_is_refused(
    stub: registry_pb2_grpc.RegistryServiceStub, registry: Registry, tiny: TinyGGUF, tmp_path: Path
) -> None:
    await stub.UploadBlob(_upload_messages(tiny.digest, tiny.path.read_bytes()))
    before = paths_below(tmp_path)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"name": "../../escape", "files": {"m.gguf": tiny.digest}}, R.ERROR_REASON_INVALID_MODEL_NAME),
        ({"name": "a/b/c/d", "files": {"m.gguf": tiny.digest}}, R.ERROR_REASON_INVALID_MODEL_NAME),
        ({"name": "ok", "files": {"../../m.gguf": tiny.digest}}, R.ERROR_REASON_INVALID_PATH),
        ({"name": "ok", "files": {"/abs/m.gguf": tiny.digest}}, R.ERROR_REASON_INVALID_PATH),
        ({"name": "ok", "files": {"m.gguf": "sha256:../../../etc/passwd"}}, R.ERROR_REASON_INVALID_DIGEST),
        ({"name": "ok", "files": {"m.gguf": "/etc/passwd"}}, R.ERROR_REASON_INVALID_DIGEST),
        ({"name": "ok", "from": "../../../etc"}, R.ERROR_REASON_INVALID_MODEL_NAME),
        ({"name": "ok"}, R.ERROR_REASON_INVALID_ARGUMENT),
        ({"name": "ok", "from": "absent"}, R.ERROR_REASON_MODEL_NOT_FOUND),
    ]
    for kwargs, reason in cases:
        err = await _create_error(stub, **kwargs)
        assert err.reason == reason, kwargs
    for name in ("../../../etc/passwd", "..", "a/../b"):
        err = await _error(stub.ResolveModel(registry_pb2.ResolveModelRequest(name=name)))
        assert err.reason == R.ERROR_REASON_INVALID_MODEL_NAME
    err = await _error(stub.ResolveModel(registry_pb2.ResolveModelRequest(name="absent")))
    assert (err.code, err.reason, err.message) == (
        grpc.StatusCode.NOT_FOUND,
        R.ERROR_REASON_MODEL_NOT_FOUND,
        "model 'absent' not found",
    )
    after = paths_below(tmp_path)
    assert {p for p in after - before if not p.name.startswith("index.db")} == set()
    assert not any(registry.store.manifests_dir.rglob("*"))


async def test_create_from_non_gguf(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    data = b"definitely not a model"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    await stub.UploadBlob(_upload_messages(digest, data))
    err = await _create_error(stub, name="m", files={"x": digest})
    assert (err.code, err.reason, err.message) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        R.ERROR_REASON_INVALID_GGUF,
        "supplied file was not in GGUF format",
    )


async def test_a_client_that_cancels_read_blob_leaves_no_error_log(
    stub: registry_pb2_grpc.RegistryServiceStub, registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    data = os.urandom(8 << 20)  # 8 messages: the server is mid-write when the client cancels
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    await stub.UploadBlob(_upload_messages(digest, data))
    caplog.set_level(logging.DEBUG, "services.registry.servicer")
    for _ in range(10):  # grpc logged an ERROR for most of such cancels, not all
        call = stub.ReadBlob(registry_pb2.ReadBlobRequest(digest=digest))
        first = await anext(aiter(call))
        assert first.size_bytes == len(data) and first.chunk
        await asyncio.sleep(0.03)  # the next write waits for the client's flow-control window
        call.cancel()
    await asyncio.sleep(0.2)  # let the server see every cancel
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("the client has gone" in r.getMessage() for r in caplog.records)  # the failed writes, at debug

    # A reader that stays gets the whole blob.
    chunks = [m.chunk async for m in stub.ReadBlob(registry_pb2.ReadBlobRequest(digest=digest))]
    assert b"".join(chunks) == data


async def test_stored_responses_put_get_delete(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    await stub.PutResponse(registry_pb2.PutResponseRequest(id="resp_1", response_json='{"a": 1}', input_json="[]"))
    got = await stub.GetResponse(registry_pb2.GetResponseRequest(id="resp_1"))
    assert (got.found, got.response_json, got.input_json) == (True, '{"a": 1}', "[]")
    assert (await stub.DeleteResponse(registry_pb2.DeleteResponseRequest(id="resp_1"))).deleted
    assert not (await stub.DeleteResponse(registry_pb2.DeleteResponseRequest(id="resp_1"))).deleted
    assert not (await stub.GetResponse(registry_pb2.GetResponseRequest(id="resp_1"))).found
    err = await _error(stub.PutResponse(registry_pb2.PutResponseRequest(id="")))
    assert err.reason == R.ERROR_REASON_INVALID_ARGUMENT
