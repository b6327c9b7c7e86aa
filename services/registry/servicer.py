"""gRPC servicer: translates RegistryService protobufs to and from the core."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

import grpc
from google.protobuf import json_format, struct_pb2

from corral.errors import CorralError
from corral.v1 import common_pb2, registry_pb2, registry_pb2_grpc, scheduler_pb2
from services.registry.core import Registry
from services.registry.create import CreateRequest
from services.registry.digests import INVALID_DIGEST_MESSAGE
from services.registry.model import StoredModel, geometry


def model_to_proto(m: StoredModel) -> registry_pb2.Model:
    out = registry_pb2.Model(
        name=m.name,
        full_name=m.full_name,
        manifest_digest=m.manifest_digest,
        size_bytes=m.size,
        details=scheduler_pb2.ModelDetails(
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
    out.modified_at.FromNanoseconds(m.modified_at_ns)
    if m.gguf is not None:
        g = geometry(m.gguf)
        out.geometry.CopyFrom(scheduler_pb2.ModelGeometry(**{**g.__dict__, "layer_bytes": list(g.layer_bytes)}))
    if m.parameters:
        out.parameters.update(m.parameters)
    return out


def _struct_to_dict(s: struct_pb2.Struct) -> dict[str, object]:
    return json_format.MessageToDict(s)


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

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
            template=request.template if request.HasField("template") else None,
            system=request.system if request.HasField("system") else None,
            parameters=_struct_to_dict(request.parameters),
            license=tuple(request.license),
            quantize=request.quantize,
        )
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

        result = await self.registry.write_blob(first.digest, chunks())
        return registry_pb2.UploadBlobResponse(created=result.created, size_bytes=result.size)


def register(registry: Registry) -> Callable[[grpc.aio.Server], Iterable[str]]:
    """The `register` callback GrpcService expects."""

    def add(server: grpc.aio.Server) -> Iterable[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(registry), server)
        return [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name]

    return add
