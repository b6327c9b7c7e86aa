import datetime

from corral.v1 import common_pb2 as _common_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResolveModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("media_type", "digest", "size_bytes")
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    media_type: str
    digest: str
    size_bytes: int
    def __init__(self, media_type: _Optional[str] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., **kwargs) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "full_name", "manifest_digest", "size_bytes", "modified_at", "details", "layers", "model_digest", "model_path", "template", "system", "parameters", "gguf_chat_template", "context_length_train", "capabilities", "bos_token", "eos_token", "add_bos_token", "geometry", "adapters", "draft")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FULL_NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    GGUF_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_TRAIN_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    BOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ADD_BOS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    name: str
    full_name: str
    manifest_digest: str
    size_bytes: int
    modified_at: _timestamp_pb2.Timestamp
    details: _common_pb2.ModelDetails
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    model_digest: str
    model_path: str
    template: str
    system: str
    parameters: _struct_pb2.Struct
    gguf_chat_template: str
    context_length_train: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    bos_token: str
    eos_token: str
    add_bos_token: bool
    geometry: _common_pb2.ModelGeometry
    adapters: _containers.RepeatedCompositeFieldContainer[_common_pb2.Adapter]
    draft: _common_pb2.DraftModel
    def __init__(self, name: _Optional[str] = ..., full_name: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., size_bytes: _Optional[int] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., details: _Optional[_Union[_common_pb2.ModelDetails, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., model_digest: _Optional[str] = ..., model_path: _Optional[str] = ..., template: _Optional[str] = ..., system: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., gguf_chat_template: _Optional[str] = ..., context_length_train: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., bos_token: _Optional[str] = ..., eos_token: _Optional[str] = ..., add_bos_token: _Optional[bool] = ..., geometry: _Optional[_Union[_common_pb2.ModelGeometry, _Mapping]] = ..., adapters: _Optional[_Iterable[_Union[_common_pb2.Adapter, _Mapping]]] = ..., draft: _Optional[_Union[_common_pb2.DraftModel, _Mapping]] = ...) -> None: ...

class ResolveModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("name", "files", "adapters", "template", "system", "parameters", "license", "quantize", "messages", "modelfile", "requires", "draft_files")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AdaptersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class DraftFilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODELFILE_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    files: _containers.ScalarMap[str, str]
    adapters: _containers.ScalarMap[str, str]
    template: str
    system: str
    parameters: _struct_pb2.Struct
    license: _containers.RepeatedScalarFieldContainer[str]
    quantize: str
    messages: _containers.RepeatedCompositeFieldContainer[ModelMessage]
    modelfile: str
    requires: str
    draft_files: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., files: _Optional[_Mapping[str, str]] = ..., adapters: _Optional[_Mapping[str, str]] = ..., template: _Optional[str] = ..., system: _Optional[str] = ..., parameters: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., license: _Optional[_Iterable[str]] = ..., quantize: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ModelMessage, _Mapping]]] = ..., modelfile: _Optional[str] = ..., requires: _Optional[str] = ..., draft_files: _Optional[_Mapping[str, str]] = ..., **kwargs) -> None: ...

class ModelMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class CreateModelResponse(_message.Message):
    __slots__ = ("status", "digest", "total", "completed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    status: str
    digest: str
    total: int
    completed: int
    def __init__(self, status: _Optional[str] = ..., digest: _Optional[str] = ..., total: _Optional[int] = ..., completed: _Optional[int] = ...) -> None: ...

class StatBlobRequest(_message.Message):
    __slots__ = ("digest",)
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    digest: str
    def __init__(self, digest: _Optional[str] = ...) -> None: ...

class StatBlobResponse(_message.Message):
    __slots__ = ("exists", "size_bytes")
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    exists: bool
    size_bytes: int
    def __init__(self, exists: _Optional[bool] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class UploadBlobRequest(_message.Message):
    __slots__ = ("digest", "chunk")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    digest: str
    chunk: bytes
    def __init__(self, digest: _Optional[str] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadBlobResponse(_message.Message):
    __slots__ = ("created", "size_bytes")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    created: bool
    size_bytes: int
    def __init__(self, created: _Optional[bool] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ReadBlobRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ReadBlobResponse(_message.Message):
    __slots__ = ("size_bytes", "chunk")
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    size_bytes: int
    chunk: bytes
    def __init__(self, size_bytes: _Optional[int] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class ShowModelRequest(_message.Message):
    __slots__ = ("name", "verbose", "system", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERBOSE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    verbose: bool
    system: str
    options: _struct_pb2.Struct
    def __init__(self, name: _Optional[str] = ..., verbose: _Optional[bool] = ..., system: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "type", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ShowModelResponse(_message.Message):
    __slots__ = ("license", "modelfile", "parameters", "template", "system", "details", "model_info_json", "capabilities", "modified_at", "messages", "tensors", "requires")
    LICENSE_FIELD_NUMBER: _ClassVar[int]
    MODELFILE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    MODEL_INFO_JSON_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    license: str
    modelfile: str
    parameters: str
    template: str
    system: str
    details: _common_pb2.ModelDetails
    model_info_json: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    modified_at: _timestamp_pb2.Timestamp
    messages: _containers.RepeatedCompositeFieldContainer[ModelMessage]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    requires: str
    def __init__(self, license: _Optional[str] = ..., modelfile: _Optional[str] = ..., parameters: _Optional[str] = ..., template: _Optional[str] = ..., system: _Optional[str] = ..., details: _Optional[_Union[_common_pb2.ModelDetails, _Mapping]] = ..., model_info_json: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., modified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., messages: _Optional[_Iterable[_Union[ModelMessage, _Mapping]]] = ..., tensors: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., requires: _Optional[str] = ...) -> None: ...

class CopyModelRequest(_message.Message):
    __slots__ = ("source", "destination")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    source: str
    destination: str
    def __init__(self, source: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class CopyModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("removed_blobs",)
    REMOVED_BLOBS_FIELD_NUMBER: _ClassVar[int]
    removed_blobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_blobs: _Optional[_Iterable[str]] = ...) -> None: ...

class PullModelRequest(_message.Message):
    __slots__ = ("name", "insecure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    insecure: bool
    def __init__(self, name: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class PushModelRequest(_message.Message):
    __slots__ = ("name", "insecure")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INSECURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    insecure: bool
    def __init__(self, name: _Optional[str] = ..., insecure: _Optional[bool] = ...) -> None: ...

class TransferProgress(_message.Message):
    __slots__ = ("status", "digest", "total", "completed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    status: str
    digest: str
    total: int
    completed: int
    def __init__(self, status: _Optional[str] = ..., digest: _Optional[str] = ..., total: _Optional[int] = ..., completed: _Optional[int] = ...) -> None: ...

class VerifyBlobsRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, digests: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyBlobsResponse(_message.Message):
    __slots__ = ("checked", "corrupt", "broken_models")
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    BROKEN_MODELS_FIELD_NUMBER: _ClassVar[int]
    checked: int
    corrupt: _containers.RepeatedScalarFieldContainer[str]
    broken_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, checked: _Optional[int] = ..., corrupt: _Optional[_Iterable[str]] = ..., broken_models: _Optional[_Iterable[str]] = ...) -> None: ...

class CollectGarbageRequest(_message.Message):
    __slots__ = ("grace_seconds",)
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    grace_seconds: float
    def __init__(self, grace_seconds: _Optional[float] = ...) -> None: ...

class CollectGarbageResponse(_message.Message):
    __slots__ = ("removed_blobs",)
    REMOVED_BLOBS_FIELD_NUMBER: _ClassVar[int]
    removed_blobs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_blobs: _Optional[_Iterable[str]] = ...) -> None: ...

class PutResponseRequest(_message.Message):
    __slots__ = ("id", "response_json", "input_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    response_json: str
    input_json: str
    def __init__(self, id: _Optional[str] = ..., response_json: _Optional[str] = ..., input_json: _Optional[str] = ...) -> None: ...

class PutResponseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetResponseRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetResponseResponse(_message.Message):
    __slots__ = ("found", "response_json", "input_json")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_JSON_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    found: bool
    response_json: str
    input_json: str
    def __init__(self, found: _Optional[bool] = ..., response_json: _Optional[str] = ..., input_json: _Optional[str] = ...) -> None: ...

class DeleteResponseRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteResponseResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...
