from corral.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolChoiceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_CHOICE_MODE_UNSPECIFIED: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_REQUIRED: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_NONE: _ClassVar[ToolChoiceMode]
TOOL_CHOICE_MODE_UNSPECIFIED: ToolChoiceMode
TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode
TOOL_CHOICE_MODE_NONE: ToolChoiceMode

class LoadModelRequest(_message.Message):
    __slots__ = ("instance_id", "model_path", "model_digest", "options")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model_path: str
    model_digest: str
    options: _common_pb2.LoadOptions
    def __init__(self, instance_id: _Optional[str] = ..., model_path: _Optional[str] = ..., model_digest: _Optional[str] = ..., options: _Optional[_Union[_common_pb2.LoadOptions, _Mapping]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("instance_id", "context_length", "num_parallel", "memory", "load_duration_ns")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NUM_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_NS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    context_length: int
    num_parallel: int
    memory: MemoryUsage
    load_duration_ns: int
    def __init__(self, instance_id: _Optional[str] = ..., context_length: _Optional[int] = ..., num_parallel: _Optional[int] = ..., memory: _Optional[_Union[MemoryUsage, _Mapping]] = ..., load_duration_ns: _Optional[int] = ...) -> None: ...

class MemoryUsage(_message.Message):
    __slots__ = ("weights_bytes", "kv_cache_bytes", "compute_bytes", "gpu_bytes", "total_bytes", "devices")
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_BYTES_FIELD_NUMBER: _ClassVar[int]
    GPU_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    gpu_bytes: int
    total_bytes: int
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.DeviceMemory]
    def __init__(self, weights_bytes: _Optional[int] = ..., kv_cache_bytes: _Optional[int] = ..., compute_bytes: _Optional[int] = ..., gpu_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.DeviceMemory, _Mapping]]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("instance_id",)
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    def __init__(self, instance_id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("unloaded",)
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    unloaded: bool
    def __init__(self, unloaded: _Optional[bool] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("instance_id", "prompt", "prompt_tokens", "sampling", "grammar", "logprobs", "top_logprobs", "add_bos", "request_id", "json_schema", "truncate", "constraint", "thinking", "no_shift", "num_ctx")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ADD_BOS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    THINKING_FIELD_NUMBER: _ClassVar[int]
    NO_SHIFT_FIELD_NUMBER: _ClassVar[int]
    NUM_CTX_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    prompt: str
    prompt_tokens: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingOptions
    grammar: str
    logprobs: bool
    top_logprobs: int
    add_bos: bool
    request_id: str
    json_schema: str
    truncate: bool
    constraint: Constraint
    thinking: ThinkingSpec
    no_shift: bool
    num_ctx: int
    def __init__(self, instance_id: _Optional[str] = ..., prompt: _Optional[str] = ..., prompt_tokens: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingOptions, _Mapping]] = ..., grammar: _Optional[str] = ..., logprobs: _Optional[bool] = ..., top_logprobs: _Optional[int] = ..., add_bos: _Optional[bool] = ..., request_id: _Optional[str] = ..., json_schema: _Optional[str] = ..., truncate: _Optional[bool] = ..., constraint: _Optional[_Union[Constraint, _Mapping]] = ..., thinking: _Optional[_Union[ThinkingSpec, _Mapping]] = ..., no_shift: _Optional[bool] = ..., num_ctx: _Optional[int] = ...) -> None: ...

class Constraint(_message.Message):
    __slots__ = ("json_schema", "json", "gbnf", "tool_calls")
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    GBNF_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    json_schema: str
    json: bool
    gbnf: str
    tool_calls: ToolCallSpec
    def __init__(self, json_schema: _Optional[str] = ..., json: _Optional[bool] = ..., gbnf: _Optional[str] = ..., tool_calls: _Optional[_Union[ToolCallSpec, _Mapping]] = ...) -> None: ...

class ToolSchema(_message.Message):
    __slots__ = ("name", "parameters_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    parameters_json: str
    def __init__(self, name: _Optional[str] = ..., parameters_json: _Optional[str] = ...) -> None: ...

class ToolCallSpec(_message.Message):
    __slots__ = ("mode", "tools", "open_tag", "close_tag", "arguments_key")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    OPEN_TAG_FIELD_NUMBER: _ClassVar[int]
    CLOSE_TAG_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_KEY_FIELD_NUMBER: _ClassVar[int]
    mode: ToolChoiceMode
    tools: _containers.RepeatedCompositeFieldContainer[ToolSchema]
    open_tag: str
    close_tag: str
    arguments_key: str
    def __init__(self, mode: _Optional[_Union[ToolChoiceMode, str]] = ..., tools: _Optional[_Iterable[_Union[ToolSchema, _Mapping]]] = ..., open_tag: _Optional[str] = ..., close_tag: _Optional[str] = ..., arguments_key: _Optional[str] = ...) -> None: ...

class ThinkingSpec(_message.Message):
    __slots__ = ("open", "close", "started", "budget_tokens")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    open: str
    close: str
    started: bool
    budget_tokens: int
    def __init__(self, open: _Optional[str] = ..., close: _Optional[str] = ..., started: _Optional[bool] = ..., budget_tokens: _Optional[int] = ...) -> None: ...

class TokenLogprob(_message.Message):
    __slots__ = ("token", "logprob", "bytes")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    token: str
    logprob: float
    bytes: bytes
    def __init__(self, token: _Optional[str] = ..., logprob: _Optional[float] = ..., bytes: _Optional[bytes] = ...) -> None: ...

class PositionLogprobs(_message.Message):
    __slots__ = ("sampled", "top")
    SAMPLED_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    sampled: TokenLogprob
    top: _containers.RepeatedCompositeFieldContainer[TokenLogprob]
    def __init__(self, sampled: _Optional[_Union[TokenLogprob, _Mapping]] = ..., top: _Optional[_Iterable[_Union[TokenLogprob, _Mapping]]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "token_ids", "done", "done_reason", "stats", "logprobs")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    DONE_REASON_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    done: bool
    done_reason: _common_pb2.DoneReason
    stats: _common_pb2.GenerationStats
    logprobs: _containers.RepeatedCompositeFieldContainer[PositionLogprobs]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., done: _Optional[bool] = ..., done_reason: _Optional[_Union[_common_pb2.DoneReason, str]] = ..., stats: _Optional[_Union[_common_pb2.GenerationStats, _Mapping]] = ..., logprobs: _Optional[_Iterable[_Union[PositionLogprobs, _Mapping]]] = ...) -> None: ...

class EmbedInput(_message.Message):
    __slots__ = ("text", "tokens")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    text: str
    tokens: TokenIds
    def __init__(self, text: _Optional[str] = ..., tokens: _Optional[_Union[TokenIds, _Mapping]] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("instance_id", "inputs", "truncate", "normalize", "request_id", "num_ctx")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_CTX_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    inputs: _containers.RepeatedCompositeFieldContainer[EmbedInput]
    truncate: bool
    normalize: bool
    request_id: str
    num_ctx: int
    def __init__(self, instance_id: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[EmbedInput, _Mapping]]] = ..., truncate: _Optional[bool] = ..., normalize: _Optional[bool] = ..., request_id: _Optional[str] = ..., num_ctx: _Optional[int] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "prompt_eval_count")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    prompt_eval_count: int
    def __init__(self, embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., prompt_eval_count: _Optional[int] = ...) -> None: ...

class RerankRequest(_message.Message):
    __slots__ = ("instance_id", "query", "documents", "truncate", "request_id", "num_ctx")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_CTX_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    query: str
    documents: _containers.RepeatedScalarFieldContainer[str]
    truncate: bool
    request_id: str
    num_ctx: int
    def __init__(self, instance_id: _Optional[str] = ..., query: _Optional[str] = ..., documents: _Optional[_Iterable[str]] = ..., truncate: _Optional[bool] = ..., request_id: _Optional[str] = ..., num_ctx: _Optional[int] = ...) -> None: ...

class RerankResponse(_message.Message):
    __slots__ = ("scores", "prompt_eval_count")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EVAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    prompt_eval_count: int
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., prompt_eval_count: _Optional[int] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("instance_id", "text", "add_special", "parse_special")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    PARSE_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    text: str
    add_special: bool
    parse_special: bool
    def __init__(self, instance_id: _Optional[str] = ..., text: _Optional[str] = ..., add_special: _Optional[bool] = ..., parse_special: _Optional[bool] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("instance_id", "tokens")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, instance_id: _Optional[str] = ..., tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance_id", "model_path", "memory", "context_length", "num_parallel", "active_sequences", "queued_requests", "loading", "load_progress")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NUM_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LOADING_FIELD_NUMBER: _ClassVar[int]
    LOAD_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model_path: str
    memory: MemoryUsage
    context_length: int
    num_parallel: int
    active_sequences: int
    queued_requests: int
    loading: bool
    load_progress: float
    def __init__(self, instance_id: _Optional[str] = ..., model_path: _Optional[str] = ..., memory: _Optional[_Union[MemoryUsage, _Mapping]] = ..., context_length: _Optional[int] = ..., num_parallel: _Optional[int] = ..., active_sequences: _Optional[int] = ..., queued_requests: _Optional[int] = ..., loading: _Optional[bool] = ..., load_progress: _Optional[float] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("runner_id", "instances", "devices")
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    runner_id: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    devices: _containers.RepeatedCompositeFieldContainer[_common_pb2.Device]
    def __init__(self, runner_id: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., devices: _Optional[_Iterable[_Union[_common_pb2.Device, _Mapping]]] = ...) -> None: ...
