import datetime

from corral.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRunnerRequest(_message.Message):
    __slots__ = ("runner_id", "address", "devices")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    address: str
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Device]
    def __init__(self, runner_id: _Optional[str] = ..., address: _Optional[str] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.Device, _Mapping]]] = ...) -> None: ...

class RegisterRunnerResponse(_message.Message):
    __slots__ = ("heartbeat_interval_ms",)
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("runner_id", "instance_ids", "devices")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_IDS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    instance_ids: _containers.RepeatedScalarFieldContainer[str]
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Device]
    def __init__(self, runner_id: _Optional[str] = ..., instance_ids: _Optional[_Iterable[str]] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.Device, _Mapping]]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("name", "manifest_digest", "model_digest", "model_path", "model_size_bytes", "details", "context_length_train", "geometry")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_TRAIN_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest_digest: str
    model_digest: str
    model_path: str
    model_size_bytes: int
    details: _common_pb2.ModelDetails
    context_length_train: int
    geometry: _common_pb2.ModelGeometry
    def __init__(self, name: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., model_digest: _Optional[str] = ..., model_path: _Optional[str] = ..., model_size_bytes: _Optional[int] = ..., details: _Optional[_Union[_common_pb2.ModelDetails, _Mapping]] = ..., context_length_train: _Optional[int] = ..., geometry: _Optional[_Union[_common_pb2.ModelGeometry, _Mapping]] = ...) -> None: ...

class AcquireModelRequest(_message.Message):
    __slots__ = ("model", "options", "keep_alive_seconds", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: ModelSpec
    options: _common_pb2.LoadOptions
    keep_alive_seconds: float
    request_id: str
    def __init__(self, model: _Optional[_Union[ModelSpec, _Mapping]] = ..., options: _Optional[_Union[_common_pb2.LoadOptions, _Mapping]] = ..., keep_alive_seconds: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class AcquireModelResponse(_message.Message):
    __slots__ = ("lease_id", "runner_address", "instance_id", "load_duration_ns", "context_length")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    runner_address: str
    instance_id: str
    load_duration_ns: int
    context_length: int
    def __init__(self, lease_id: _Optional[str] = ..., runner_address: _Optional[str] = ..., instance_id: _Optional[str] = ..., load_duration_ns: _Optional[int] = ..., context_length: _Optional[int] = ...) -> None: ...

class ReleaseModelRequest(_message.Message):
    __slots__ = ("lease_id", "runner_failed")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FAILED_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    runner_failed: bool
    def __init__(self, lease_id: _Optional[str] = ..., runner_failed: _Optional[bool] = ...) -> None: ...

class ReleaseModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SchedulerUnloadModelRequest(_message.Message):
    __slots__ = ("model_digest", "manifest_digest")
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    model_digest: str
    manifest_digest: str
    def __init__(self, model_digest: _Optional[str] = ..., manifest_digest: _Optional[str] = ...) -> None: ...

class SchedulerUnloadModelResponse(_message.Message):
    __slots__ = ("unloading",)
    UNLOADING_FIELD_NUMBER: _ClassVar[int]
    unloading: bool
    def __init__(self, unloading: _Optional[bool] = ...) -> None: ...

class ListLoadedModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedModel(_message.Message):
    __slots__ = ("name", "manifest_digest", "details", "size_bytes", "size_vram_bytes", "expires_at", "context_length", "runner_id", "active_leases", "devices", "num_parallel", "also_serving")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_VRAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_LEASES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    NUM_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    ALSO_SERVING_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest_digest: str
    details: _common_pb2.ModelDetails
    size_bytes: int
    size_vram_bytes: int
    expires_at: _timestamp_pb2.Timestamp
    context_length: int
    runner_id: str
    active_leases: int
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.DeviceMemory]
    num_parallel: int
    also_serving: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., manifest_digest: _Optional[str] = ..., details: _Optional[_Union[_common_pb2.ModelDetails, _Mapping]] = ..., size_bytes: _Optional[int] = ..., size_vram_bytes: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., context_length: _Optional[int] = ..., runner_id: _Optional[str] = ..., active_leases: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.DeviceMemory, _Mapping]]] = ..., num_parallel: _Optional[int] = ..., also_serving: _Optional[_Iterable[str]] = ...) -> None: ...

class ListLoadedModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[LoadedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[LoadedModel, _Mapping]]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunnerInfo(_message.Message):
    __slots__ = ("runner_id", "address", "loaded_models", "devices")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    address: str
    loaded_models: int
    devices: _containers.RepeatedCompositeFieldContainer[DeviceUsage]
    def __init__(self, runner_id: _Optional[str] = ..., address: _Optional[str] = ..., loaded_models: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[DeviceUsage, _Mapping]]] = ...) -> None: ...

class DeviceUsage(_message.Message):
    __slots__ = ("device", "allocated_bytes", "available_bytes")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ALLOCATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    device: _common_pb2.Device
    allocated_bytes: int
    available_bytes: int
    def __init__(self, device: _Optional[_Union[_common_pb2.Device, _Mapping]] = ..., allocated_bytes: _Optional[int] = ..., available_bytes: _Optional[int] = ...) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("runners", "max_loaded_models", "max_queue", "num_parallel", "default_context_length", "default_keep_alive_seconds", "queued_requests")
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    MAX_LOADED_MODELS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    NUM_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_KEEP_ALIVE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    runners: _containers.RepeatedCompositeFieldContainer[RunnerInfo]
    max_loaded_models: int
    max_queue: int
    num_parallel: int
    default_context_length: int
    default_keep_alive_seconds: float
    queued_requests: int
    def __init__(self, runners: _Optional[_Iterable[_Union[RunnerInfo, _Mapping]]] = ..., max_loaded_models: _Optional[int] = ..., max_queue: _Optional[int] = ..., num_parallel: _Optional[int] = ..., default_context_length: _Optional[int] = ..., default_keep_alive_seconds: _Optional[float] = ..., queued_requests: _Optional[int] = ...) -> None: ...
