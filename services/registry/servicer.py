"""gRPC servicer: translates RegistryService protobufs to and from the core."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from corral.errors import CorralError
from corral.v1 import common_pb2, registry_pb2, registry_pb2_grpc
from services.registry.core import Registry
from services.registry.create import CreateRequest, Progress
from services.registry.digests import INVALID_DIGEST_MESSAGE
from services.registry.model import StoredModel, geometry
from services.registry.responses import ResponseStore
from services.registry.store import disk_full_as_error

log = logging.getLogger(__name__)

DRAIN_UPLOAD_S = 30.0  # the most a failed upload's remaining bytes are read (and dropped)


def model_to_proto(m: StoredModel) -> registry_pb2.Model:
    out = registry_pb2.Model(
        name=m.name,
        full_name=m.full_name,
        manifest_digest=m.manifest_digest,
        size_bytes=m.size,
        details=common_pb2.ModelDetails(
            parent_model=m.details.parent_model,
            format=m.details.format,
            family=m.details.family,
            families=list(m.details.families),
            parameter_size=m.details.parameter_size,
            quantization_level=m.details.quantization_level,
        ),
        layers=[
            registry_pb2.Layer(media_type=la.media_type, digest=la.digest, size_bytes=la.size, **{"from": la.from_})
            for la in m.layers
        ],
        model_digest=m.model_digest,
        model_path=m.model_path,
        template=m.template,
        system=m.system,
        gguf_chat_template=m.gguf_chat_template,
        context_length_train=min(m.context_length_train, 2**31 - 1),
        capabilities=list(m.capabilities),
        bos_token=m.bos_token,
        eos_token=m.eos_token,
        add_bos_token=m.add_bos_token,
    )
    out.adapters.extend(common_pb2.Adapter(digest=d, path=p, scale=1.0) for d, p in m.adapters)
    if m.draft is not None:
        digest, path, size = m.draft
        out.draft.CopyFrom(common_pb2.DraftModel(digest=digest, path=path, size_bytes=size))
    out.modified_at.FromNanoseconds(m.modified_at_ns)
    if m.gguf is not None:
        g = geometry(m.gguf)
        out.geometry.CopyFrom(common_pb2.ModelGeometry(**{**g.__dict__, "layer_bytes": list(g.layer_bytes)}))
    if m.parameters:
        out.parameters.update(m.parameters)
    return out


def _struct_to_dict(s: struct_pb2.Struct) -> dict[str, object]:
    return json_format.MessageToDict(s)


async def _write_all(context: grpc.aio.ServicerContext, messages: AsyncGenerator[Any, None]) -> None:
    """Write a streaming reply here rather than yield it to grpc.

    When a client cancels while a write is in flight, the write fails (ExecuteBatchError, an
    InternalError) and grpc, if it sees that before the cancel itself, logs it as an ERROR.
    Here the RPC ends as grpc ends a cancelled one, quietly; `messages` is closed first.
    """
    async with contextlib.aclosing(messages):
        with disk_full_as_error():
            async for message in messages:
                try:
                    await context.write(message)
                except grpc.aio.InternalError as exc:  # the call has ended under the write
                    log.debug("streaming reply ended: the client has gone (%s)", exc)
                    raise asyncio.CancelledError from None


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry, gc_grace_seconds: float = 3600.0) -> None:
        self.registry = registry
        self.gc_grace_seconds = gc_grace_seconds

    async def ResolveModel(
        self, request: registry_pb2.ResolveModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ResolveModelResponse:
        model = await self.registry.resolve(request.name)
        return registry_pb2.ResolveModelResponse(model=model_to_proto(model))

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListModelsResponse:
        models = await self.registry.list_models()
        return registry_pb2.ListModelsResponse(models=[model_to_proto(m) for m in models])

    async def CreateModel(
        self, request: registry_pb2.CreateModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.CreateModelResponse]:
        req = CreateRequest(
            name=request.name,
            from_=getattr(request, "from"),
            files=dict(request.files),
            adapters=dict(request.adapters),
            draft_files=dict(request.draft_files),
            template=request.template if request.HasField("template") else None,
            system=request.system if request.HasField("system") else None,
            parameters=_struct_to_dict(request.parameters),
            license=tuple(request.license),
            quantize=request.quantize,
            messages=tuple((m.role, m.content) for m in request.messages) or None,
            modelfile=request.modelfile,
            requires=request.requires,
        )
        await _write_all(context, self._create_events(req))
        return
        yield  # an async generator, as the ErrorInterceptor expects of a streaming method

    async def _create_events(self, req: CreateRequest) -> AsyncGenerator[registry_pb2.CreateModelResponse, None]:
        async for event in self.registry.create(req):
            yield registry_pb2.CreateModelResponse(
                status=event.status, digest=event.digest, total=event.total, completed=event.completed
            )

    async def StatBlob(
        self, request: registry_pb2.StatBlobRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.StatBlobResponse:
        size = await self.registry.stat_blob(request.digest)
        return registry_pb2.StatBlobResponse(exists=size is not None, size_bytes=size or 0)

    async def UploadBlob(
        self, request_iterator: AsyncIterator[registry_pb2.UploadBlobRequest], context: grpc.aio.ServicerContext
    ) -> registry_pb2.UploadBlobResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.digest:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_DIGEST, INVALID_DIGEST_MESSAGE)

        head = first.chunk

        async def chunks() -> AsyncIterator[bytes]:
            if head:
                yield head
            async for message in request_iterator:
                yield message.chunk

        try:
            with disk_full_as_error():
                result = await self.registry.write_blob(first.digest, chunks())
        except CorralError:
            # Read the rest of the upload before answering: a client-streaming call that ends
            # while its client still writes can reach the client as "Internal error from Core"
            # instead of this status.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DRAIN_UPLOAD_S):
                    async for _ in request_iterator:
                        pass
            raise
        return registry_pb2.UploadBlobResponse(created=result.created, size_bytes=result.size)

    async def ReadBlob(
        self, request: registry_pb2.ReadBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.ReadBlobResponse]:
        await _write_all(context, self._blob_chunks(request))
        return
        yield  # an async generator, as the ErrorInterceptor expects of a streaming method

    async def _blob_chunks(self, request: registry_pb2.ReadBlobRequest) -> AsyncGenerator[Any, None]:
        first = True
        async for size, chunk in self.registry.read_blob(request.digest, request.offset):
            yield registry_pb2.ReadBlobResponse(size_bytes=size if first else 0, chunk=chunk)
            first = False

    async def ShowModel(
        self, request: registry_pb2.ShowModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ShowModelResponse:
        r = await self.registry.show(
            request.name,
            verbose=request.verbose,
            system=request.system if request.HasField("system") else None,
            options=_struct_to_dict(request.options),
        )
        base = model_to_proto(r.model)
        out = registry_pb2.ShowModelResponse(
            license=r.license,
            modelfile=r.modelfile,
            parameters=r.parameters,
            template=r.template,
            system=r.system,
            details=base.details,
            model_info_json=json.dumps(r.model_info, ensure_ascii=False),
            capabilities=list(r.model.capabilities),
            messages=[registry_pb2.ModelMessage(role=role, content=text) for role, text in r.messages],
            tensors=[registry_pb2.TensorInfo(name=t.name, type=t.type, shape=t.shape) for t in r.tensors],
            requires=str(r.model.config.get("requires") or ""),
        )
        out.modified_at.CopyFrom(base.modified_at)
        return out

    async def CopyModel(
        self, request: registry_pb2.CopyModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.CopyModelResponse:
        with disk_full_as_error():
            await self.registry.copy(request.source, request.destination)
        return registry_pb2.CopyModelResponse()

    async def DeleteModel(
        self, request: registry_pb2.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteModelResponse:
        with disk_full_as_error():
            return registry_pb2.DeleteModelResponse(removed_blobs=await self.registry.delete(request.name))

    async def PullModel(
        self, request: registry_pb2.PullModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.TransferProgress]:
        await _write_all(context, _progress(self.registry.pull(request.name, request.insecure)))
        return
        yield  # an async generator, as the ErrorInterceptor expects of a streaming method

    async def PushModel(
        self, request: registry_pb2.PushModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[registry_pb2.TransferProgress]:
        await _write_all(context, _progress(self.registry.push(request.name, request.insecure)))
        return
        yield  # an async generator, as the ErrorInterceptor expects of a streaming method

    async def VerifyBlobs(
        self, request: registry_pb2.VerifyBlobsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.VerifyBlobsResponse:
        report = await self.registry.verify(list(request.digests))
        return registry_pb2.VerifyBlobsResponse(
            checked=report.checked, corrupt=report.corrupt, broken_models=report.broken_models
        )

    async def CollectGarbage(
        self, request: registry_pb2.CollectGarbageRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.CollectGarbageResponse:
        grace = request.grace_seconds if request.HasField("grace_seconds") else self.gc_grace_seconds
        return registry_pb2.CollectGarbageResponse(removed_blobs=await self.registry.collect_garbage(grace))

    def _responses(self) -> ResponseStore:
        if self.registry.responses is None:
            raise CorralError(common_pb2.ERROR_REASON_UNSUPPORTED, "this registry does not store responses")
        return self.registry.responses

    async def PutResponse(
        self, request: registry_pb2.PutResponseRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.PutResponseResponse:
        if not request.id:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "a stored response needs an id")
        await self._responses().put(request.id, request.response_json, request.input_json)
        return registry_pb2.PutResponseResponse()

    async def GetResponse(
        self, request: registry_pb2.GetResponseRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetResponseResponse:
        stored = await self._responses().get(request.id)
        if stored is None:
            return registry_pb2.GetResponseResponse(found=False)
        return registry_pb2.GetResponseResponse(
            found=True, response_json=stored.response_json, input_json=stored.input_json
        )

    async def DeleteResponse(
        self, request: registry_pb2.DeleteResponseRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.DeleteResponseResponse:
        return registry_pb2.DeleteResponseResponse(deleted=await self._responses().delete(request.id))


async def _progress(events: AsyncIterator[Progress]) -> AsyncGenerator[registry_pb2.TransferProgress, None]:
    async for e in events:
        yield registry_pb2.TransferProgress(status=e.status, digest=e.digest, total=e.total, completed=e.completed)


def register(registry: Registry, gc_grace_seconds: float = 3600.0) -> Callable[[grpc.aio.Server], Iterable[str]]:
    """The `register` callback GrpcService expects."""

    def add(server: grpc.aio.Server) -> Iterable[str]:
        servicer = RegistryServicer(registry, gc_grace_seconds)
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
        return [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name]

    return add
