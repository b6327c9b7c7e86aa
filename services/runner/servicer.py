"""RunnerService: thin translation between protobuf and `Runner`."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc

from corral.errors import CorralError
from corral.v1 import common_pb2, runner_pb2, runner_pb2_grpc
from services.runner import metrics
from services.runner.constraints import Constraint, Thinking, ToolCalls, ToolSpec
from services.runner.core import InstanceState, Runner
from services.runner.devices import DeviceInfo
from services.runner.embed import EmbedInput
from services.runner.jobs import GenerateSpec, GenEvent
from services.runner.logprobs import PositionLogprobs, TokenLogprob
from services.runner.native import DEFAULT_DRAFT_NUM_PREDICT, DEFAULT_NUM_CTX, MAX_DEVICES, LoadSpec, MemoryUsage
from services.runner.sampling import SamplingParams


@dataclass(frozen=True)
class LoadDefaults:
    """Runner-wide values for LoadOptions fields left at 0/unset (from Settings)."""

    num_ctx: int = DEFAULT_NUM_CTX
    num_parallel: int = 1
    num_thread: int = 0
    flash_attention: bool | None = None
    kv_cache_type: str = "f16"


def _invalid(msg: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, msg)


def _checked_split(split: Sequence[float], gpus: Sequence[DeviceInfo]) -> tuple[float, ...]:
    ids = ", ".join(d.id for d in gpus) or "none"
    if len(split) != len(gpus):
        raise _invalid(f"tensor_split has {len(split)} entries; this runner drives {len(gpus)} GPU(s) ({ids})")
    if len(split) > MAX_DEVICES:
        raise _invalid(f"tensor_split over {len(split)} GPUs; llama.cpp supports {MAX_DEVICES}")
    if not all(math.isfinite(x) and x >= 0 for x in split) or sum(split) <= 0:
        raise _invalid("tensor_split shares must be finite, non-negative and not all zero")
    return tuple(split)


def gpu_placement(o: common_pb2.LoadOptions, gpus: Sequence[DeviceInfo]) -> tuple[int | None, tuple[float, ...]]:
    """(main_gpu as a CUDA ordinal, tensor_split by CUDA ordinal) for a GPU runner.

    CUDA ordinal k is the runner's k-th device (devices.cuda_env pins it), so the
    scheduler's Device.index becomes a position in the runner's list.
    """
    if o.tensor_split:
        return None, _checked_split(o.tensor_split, gpus)
    if o.HasField("main_gpu"):
        ordinal = next((k for k, d in enumerate(gpus) if d.index == o.main_gpu), None)
        if ordinal is None:
            ids = ", ".join(d.id for d in gpus)
            raise _invalid(f"main_gpu {o.main_gpu} is not a GPU of this runner ({ids})")
        return ordinal, ()
    if len(gpus) == 1:
        return 0, ()  # the whole model on the one GPU, no split
    return None, ()  # llama.cpp's default: split over every GPU by free memory


def load_spec(req: runner_pb2.LoadModelRequest, defaults: LoadDefaults, devices: Sequence[DeviceInfo]) -> LoadSpec:
    """LoadOptions after defaults, placed on the runner's `devices` (in the runner's order)."""
    o = req.options
    gpus = [d for d in devices if d.kind == "cuda"]
    # A CPU runner offloads nothing, so main_gpu and tensor_split do not apply.
    main_gpu, tensor_split = gpu_placement(o, gpus) if gpus else (None, ())
    return LoadSpec(
        model_path=req.model_path,
        num_ctx=o.num_ctx or defaults.num_ctx,
        num_batch=o.num_batch,
        num_parallel=o.num_parallel or defaults.num_parallel,
        num_thread=o.num_thread or defaults.num_thread,
        num_gpu=(o.num_gpu if o.HasField("num_gpu") else -1) if gpus else 0,
        main_gpu=main_gpu,
        tensor_split=tensor_split,
        gpu_ids=tuple(d.id for d in gpus),
        use_mmap=o.use_mmap if o.HasField("use_mmap") else None,
        flash_attention=o.flash_attention if o.HasField("flash_attention") else defaults.flash_attention,
        kv_cache_type=o.kv_cache_type or defaults.kv_cache_type,
        adapters=tuple((a.path, a.scale or 1.0) for a in o.adapters),
        model_digest=req.model_digest,
        adapter_digests=tuple(a.digest for a in o.adapters),
        draft_model_path=o.draft.path if o.HasField("draft") else "",
        draft_model_digest=o.draft.digest if o.HasField("draft") else "",
        draft_num_predict=o.draft_num_predict or DEFAULT_DRAFT_NUM_PREDICT,
    )


def generate_spec(req: runner_pb2.GenerateRequest) -> GenerateSpec:
    """The request's fields; proto defaults (empty, 0, false) mean the same as GenerateSpec's."""
    return GenerateSpec(
        prompt=req.prompt,
        prompt_tokens=tuple(req.prompt_tokens),
        add_bos=req.add_bos,
        params=SamplingParams.from_proto(req.sampling),
        grammar=req.grammar,
        json_schema=req.json_schema,
        logprobs=req.logprobs,
        top_logprobs=req.top_logprobs,
        truncate=req.truncate,
        shift=not req.no_shift,
        num_ctx=req.num_ctx,
        request_id=req.request_id,
        constraint=constraint(req.constraint) if req.HasField("constraint") else None,
        thinking=thinking(req.thinking) if req.HasField("thinking") else None,
    )


_TOOL_MODES = {runner_pb2.TOOL_CHOICE_MODE_REQUIRED: "required", runner_pb2.TOOL_CHOICE_MODE_NONE: "none"}


def constraint(c: runner_pb2.Constraint) -> Constraint | None:
    kind = c.WhichOneof("kind")
    if kind == "json_schema":
        return Constraint(json_schema=c.json_schema)
    if kind == "json":
        return Constraint(json=c.json)
    if kind == "gbnf":
        return Constraint(gbnf=c.gbnf)
    if kind == "tool_calls":
        t = c.tool_calls
        if t.mode not in _TOOL_MODES:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "tool_calls needs a mode")
        return Constraint(
            tool_calls=ToolCalls(
                mode=_TOOL_MODES[t.mode],
                tools=tuple(ToolSpec(x.name, x.parameters_json) for x in t.tools),
                open_tag=t.open_tag,
                close_tag=t.close_tag,
                arguments_key=t.arguments_key or "arguments",
            )
        )
    return None


def thinking(t: runner_pb2.ThinkingSpec) -> Thinking:
    return Thinking(open=t.open, close=t.close, started=t.started, budget_tokens=t.budget_tokens)


def memory_pb(m: MemoryUsage) -> runner_pb2.MemoryUsage:
    return runner_pb2.MemoryUsage(
        weights_bytes=m.weights_bytes,
        kv_cache_bytes=m.kv_cache_bytes,
        compute_bytes=m.compute_bytes,
        gpu_bytes=m.gpu_bytes,
        total_bytes=m.total_bytes,
        devices=[common_pb2.DeviceMemory(device_id=d, bytes=b) for d, b in m.devices],
    )


def _token_pb(t: TokenLogprob) -> runner_pb2.TokenLogprob:
    return runner_pb2.TokenLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes)


def logprobs_pb(p: PositionLogprobs) -> runner_pb2.PositionLogprobs:
    return runner_pb2.PositionLogprobs(sampled=_token_pb(p.sampled), top=[_token_pb(t) for t in p.top])


def event_pb(ev: GenEvent) -> runner_pb2.GenerateResponse:
    out = runner_pb2.GenerateResponse(
        text=ev.text, token_ids=ev.token_ids, done=ev.done, logprobs=[logprobs_pb(p) for p in ev.logprobs]
    )
    if ev.done:
        out.done_reason = ev.done_reason  # type: ignore[assignment]
    if ev.stats is not None:
        s = ev.stats
        out.stats.CopyFrom(
            common_pb2.GenerationStats(
                prompt_eval_count=s.prompt_eval_count,
                prompt_eval_duration_ns=s.prompt_eval_duration_ns,
                eval_count=s.eval_count,
                eval_duration_ns=s.eval_duration_ns,
                prompt_cached_count=s.prompt_cached_count,
            )
        )
    return out


class RunnerServicer(runner_pb2_grpc.RunnerServiceServicer):
    def __init__(self, runner: Runner, defaults: LoadDefaults | None = None) -> None:
        self.runner = runner
        self.defaults = defaults or LoadDefaults()

    async def LoadModel(
        self, request: runner_pb2.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.LoadModelResponse:
        spec = load_spec(request, self.defaults, self.runner.devices())
        info = await self.runner.load(request.instance_id, spec)
        return runner_pb2.LoadModelResponse(
            instance_id=request.instance_id,
            context_length=info.context_length,
            num_parallel=info.num_parallel,
            memory=memory_pb(info.memory),
            load_duration_ns=info.load_duration_ns,
        )

    async def UnloadModel(
        self, request: runner_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.UnloadModelResponse:
        return runner_pb2.UnloadModelResponse(unloaded=await self.runner.unload(request.instance_id))

    async def Generate(  # type: ignore[override]
        self, request: runner_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runner_pb2.GenerateResponse]:
        stream = self.runner.generate(request.instance_id, generate_spec(request))
        try:
            async for ev in stream:
                if ev.done and ev.stats is not None:
                    metrics.trace_phases(ev.stats)
                yield event_pb(ev)
        finally:
            stream.cancel()  # client cancelled (CancelledError) or went away: free the sequence

    async def Embed(
        self, request: runner_pb2.EmbedRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.EmbedResponse:
        inputs = [
            EmbedInput(tokens=tuple(i.tokens.ids)) if i.WhichOneof("input") == "tokens" else EmbedInput(text=i.text)
            for i in request.inputs
        ]
        vectors, count = await self.runner.embed(
            request.instance_id, inputs, request.truncate, request.normalize, request.num_ctx
        )
        return runner_pb2.EmbedResponse(
            embeddings=[runner_pb2.Embedding(values=v) for v in vectors], prompt_eval_count=count
        )

    async def Rerank(
        self, request: runner_pb2.RerankRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.RerankResponse:
        scores, count = await self.runner.rerank(
            request.instance_id, request.query, list(request.documents), request.truncate, request.num_ctx
        )
        return runner_pb2.RerankResponse(scores=scores, prompt_eval_count=count)

    async def Tokenize(
        self, request: runner_pb2.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.TokenizeResponse:
        tokens = await self.runner.tokenize(
            request.instance_id, request.text, request.add_special, request.parse_special
        )
        return runner_pb2.TokenizeResponse(tokens=tokens)

    async def Detokenize(
        self, request: runner_pb2.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.DetokenizeResponse:
        text = await self.runner.detokenize(request.instance_id, list(request.tokens))
        return runner_pb2.DetokenizeResponse(text=text)

    async def GetStatus(
        self, request: runner_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> runner_pb2.GetStatusResponse:
        instances = [_instance_status(s) for s in self.runner.status()]
        devices = [d.to_proto() for d in self.runner.devices()]
        return runner_pb2.GetStatusResponse(runner_id=self.runner.runner_id, devices=devices, instances=instances)


def _instance_status(s: InstanceState) -> runner_pb2.InstanceStatus:
    if s.info is None:  # still loading
        return runner_pb2.InstanceStatus(
            instance_id=s.instance_id, model_path=s.model_path, loading=True, load_progress=s.load_progress
        )
    return runner_pb2.InstanceStatus(
        instance_id=s.instance_id,
        model_path=s.model_path,
        memory=memory_pb(s.info.memory),
        context_length=s.info.context_length,
        num_parallel=s.info.num_parallel,
        active_sequences=s.active_sequences,
        queued_requests=s.queued_requests,
        load_progress=1.0,
    )


def register(servicer: RunnerServicer) -> Callable[[grpc.aio.Server], list[str]]:
    """A `register(server)` for GrpcService."""

    def add(server: grpc.aio.Server) -> list[str]:
        runner_pb2_grpc.add_RunnerServiceServicer_to_server(servicer, server)
        return [runner_pb2.DESCRIPTOR.services_by_name["RunnerService"].full_name]

    return add
