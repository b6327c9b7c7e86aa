from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_KIND_UNSPECIFIED: _ClassVar[DeviceKind]
    DEVICE_KIND_CPU: _ClassVar[DeviceKind]
    DEVICE_KIND_CUDA: _ClassVar[DeviceKind]

class DoneReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DONE_REASON_UNSPECIFIED: _ClassVar[DoneReason]
    DONE_REASON_STOP: _ClassVar[DoneReason]
    DONE_REASON_LENGTH: _ClassVar[DoneReason]
    DONE_REASON_CANCELLED: _ClassVar[DoneReason]

class ErrorReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_REASON_UNSPECIFIED: _ClassVar[ErrorReason]
    ERROR_REASON_MODEL_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_MODEL_NAME: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_DIGEST: _ClassVar[ErrorReason]
    ERROR_REASON_DIGEST_MISMATCH: _ClassVar[ErrorReason]
    ERROR_REASON_BLOB_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_GGUF: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_ARGUMENT: _ClassVar[ErrorReason]
    ERROR_REASON_QUEUE_FULL: _ClassVar[ErrorReason]
    ERROR_REASON_NO_RUNNER: _ClassVar[ErrorReason]
    ERROR_REASON_LOAD_FAILED: _ClassVar[ErrorReason]
    ERROR_REASON_RUNNER_FAILED: _ClassVar[ErrorReason]
    ERROR_REASON_INSTANCE_NOT_FOUND: _ClassVar[ErrorReason]
    ERROR_REASON_PROMPT_TOO_LONG: _ClassVar[ErrorReason]
    ERROR_REASON_INVALID_PATH: _ClassVar[ErrorReason]
    ERROR_REASON_UNSUPPORTED: _ClassVar[ErrorReason]
    ERROR_REASON_NO_SPACE: _ClassVar[ErrorReason]
DEVICE_KIND_UNSPECIFIED: DeviceKind
DEVICE_KIND_CPU: DeviceKind
DEVICE_KIND_CUDA: DeviceKind
DONE_REASON_UNSPECIFIED: DoneReason
DONE_REASON_STOP: DoneReason
DONE_REASON_LENGTH: DoneReason
DONE_REASON_CANCELLED: DoneReason
ERROR_REASON_UNSPECIFIED: ErrorReason
ERROR_REASON_MODEL_NOT_FOUND: ErrorReason
ERROR_REASON_INVALID_MODEL_NAME: ErrorReason
ERROR_REASON_INVALID_DIGEST: ErrorReason
ERROR_REASON_DIGEST_MISMATCH: ErrorReason
ERROR_REASON_BLOB_NOT_FOUND: ErrorReason
ERROR_REASON_INVALID_GGUF: ErrorReason
ERROR_REASON_INVALID_ARGUMENT: ErrorReason
ERROR_REASON_QUEUE_FULL: ErrorReason
ERROR_REASON_NO_RUNNER: ErrorReason
ERROR_REASON_LOAD_FAILED: ErrorReason
ERROR_REASON_RUNNER_FAILED: ErrorReason
ERROR_REASON_INSTANCE_NOT_FOUND: ErrorReason
ERROR_REASON_PROMPT_TOO_LONG: ErrorReason
ERROR_REASON_INVALID_PATH: ErrorReason
ERROR_REASON_UNSUPPORTED: ErrorReason
ERROR_REASON_NO_SPACE: ErrorReason

class Device(_message.Message):
    __slots__ = ("id", "kind", "index", "name", "total_memory_bytes", "free_memory_bytes", "host")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: DeviceKind
    index: int
    name: str
    total_memory_bytes: int
    free_memory_bytes: int
    host: str
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[DeviceKind, str]] = ..., index: _Optional[int] = ..., name: _Optional[str] = ..., total_memory_bytes: _Optional[int] = ..., free_memory_bytes: _Optional[int] = ..., host: _Optional[str] = ...) -> None: ...

class DeviceMemory(_message.Message):
    __slots__ = ("device_id", "bytes")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    bytes: int
    def __init__(self, device_id: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class SamplingOptions(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "seed", "num_predict", "stop", "num_keep", "speculative", "logit_bias")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_P_FIELD_NUMBER: _ClassVar[int]
    REPEAT_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPEAT_LAST_N_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_PREDICT_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    NUM_KEEP_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    typical_p: float
    repeat_penalty: float
    repeat_last_n: int
    presence_penalty: float
    frequency_penalty: float
    seed: int
    num_predict: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    num_keep: int
    speculative: bool
    logit_bias: _containers.ScalarMap[int, float]
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., min_p: _Optional[float] = ..., typical_p: _Optional[float] = ..., repeat_penalty: _Optional[float] = ..., repeat_last_n: _Optional[int] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., num_predict: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., num_keep: _Optional[int] = ..., speculative: _Optional[bool] = ..., logit_bias: _Optional[_Mapping[int, float]] = ...) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("digest", "path", "scale")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    digest: str
    path: str
    scale: float
    def __init__(self, digest: _Optional[str] = ..., path: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class DraftModel(_message.Message):
    __slots__ = ("digest", "path", "size_bytes")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    digest: str
    path: str
    size_bytes: int
    def __init__(self, digest: _Optional[str] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class LoadOptions(_message.Message):
    __slots__ = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "num_parallel", "adapters", "kv_cache_type", "flash_attention", "tensor_split", "draft", "draft_num_predict")
    NUM_CTX_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCH_FIELD_NUMBER: _ClassVar[int]
    NUM_GPU_FIELD_NUMBER: _ClassVar[int]
    MAIN_GPU_FIELD_NUMBER: _ClassVar[int]
    USE_MMAP_FIELD_NUMBER: _ClassVar[int]
    NUM_THREAD_FIELD_NUMBER: _ClassVar[int]
    NUM_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FLASH_ATTENTION_FIELD_NUMBER: _ClassVar[int]
    TENSOR_SPLIT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_FIELD_NUMBER: _ClassVar[int]
    DRAFT_NUM_PREDICT_FIELD_NUMBER: _ClassVar[int]
    num_ctx: int
    num_batch: int
    num_gpu: int
    main_gpu: int
    use_mmap: bool
    num_thread: int
    num_parallel: int
    adapters: _containers.RepeatedCompositeFieldContainer[Adapter]
    kv_cache_type: str
    flash_attention: bool
    tensor_split: _containers.RepeatedScalarFieldContainer[float]
    draft: DraftModel
    draft_num_predict: int
    def __init__(self, num_ctx: _Optional[int] = ..., num_batch: _Optional[int] = ..., num_gpu: _Optional[int] = ..., main_gpu: _Optional[int] = ..., use_mmap: _Optional[bool] = ..., num_thread: _Optional[int] = ..., num_parallel: _Optional[int] = ..., adapters: _Optional[_Iterable[_Union[Adapter, _Mapping]]] = ..., kv_cache_type: _Optional[str] = ..., flash_attention: _Optional[bool] = ..., tensor_split: _Optional[_Iterable[float]] = ..., draft: _Optional[_Union[DraftModel, _Mapping]] = ..., draft_num_predict: _Optional[int] = ...) -> None: ...

class ModelGeometry(_message.Message):
    __slots__ = ("block_count", "embedding_length", "head_count", "head_count_kv", "key_length", "value_length", "sliding_window", "layer_bytes", "output_bytes", "other_bytes", "vocab_size")
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HEAD_COUNT_FIELD_NUMBER: _ClassVar[int]
    HEAD_COUNT_KV_FIELD_NUMBER: _ClassVar[int]
    KEY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    VALUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SLIDING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    LAYER_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OTHER_BYTES_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    sliding_window: int
    layer_bytes: _containers.RepeatedScalarFieldContainer[int]
    output_bytes: int
    other_bytes: int
    vocab_size: int
    def __init__(self, block_count: _Optional[int] = ..., embedding_length: _Optional[int] = ..., head_count: _Optional[int] = ..., head_count_kv: _Optional[int] = ..., key_length: _Optional[int] = ..., value_length: _Optional[int] = ..., sliding_window: _Optional[int] = ..., layer_bytes: _Optional[_Iterable[int]] = ..., output_bytes: _Optional[int] = ..., other_bytes: _Optional[int] = ..., vocab_size: _Optional[int] = ...) -> None: ...

class ModelDetails(_message.Message):
    __slots__ = ("parent_model", "format", "family", "families", "parameter_size", "quantization_level")
    PARENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    FAMILIES_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    parent_model: str
    format: str
    family: str
    families: _containers.RepeatedScalarFieldContainer[str]
    parameter_size: str
    quantization_level: str
    def __init__(self, parent_model: _Optional[str] = ..., format: _Optional[str] = ..., family: _Optional[str] = ..., families: _Optional[_Iterable[str]] = ..., parameter_size: _Optional[str] = ..., quantization_level: _Optional[str] = ...) -> None: ...

class GenerationStats(_message.Message):
    __slots__ = ("prompt_eval_count", "prompt_eval_duration_ns", "eval_count", "eval_duration_ns", "prompt_cached_count")
    PROMPT_EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EVAL_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    EVAL_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_CACHED_COUNT_FIELD_NUMBER: _ClassVar[int]
    prompt_eval_count: int
    prompt_eval_duration_ns: int
    eval_count: int
    eval_duration_ns: int
    prompt_cached_count: int
    def __init__(self, prompt_eval_count: _Optional[int] = ..., prompt_eval_duration_ns: _Optional[int] = ..., eval_count: _Optional[int] = ..., eval_duration_ns: _Optional[int] = ..., prompt_cached_count: _Optional[int] = ...) -> None: ...
