"""The path every generation takes: registry → scheduler lease → runner stream → release."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from corral.errors import CorralError, from_rpc_error
from corral.logs import REQUEST_ID
from corral.v1 import common_pb2, registry_pb2, runner_pb2, runner_pb2_grpc, scheduler_pb2
from services.gateway import errors
from services.gateway.backends import Backends
from services.gateway.observability import GenerationTimer

log = logging.getLogger(__name__)

T = TypeVar("T")


async def resolve(backends: Backends, name: str) -> registry_pb2.Model:
    try:
        resp = await backends.registry.ResolveModel(registry_pb2.ResolveModelRequest(name=name), timeout=30)
    except grpc.RpcError as err:
        raise errors.from_rpc(err, name) from err
    return resp.model


def model_spec(model: registry_pb2.Model) -> scheduler_pb2.ModelSpec:
    return scheduler_pb2.ModelSpec(
        name=model.name,
        manifest_digest=model.manifest_digest,
        model_digest=model.model_digest,
        model_path=model.model_path,
        model_size_bytes=next((layer.size_bytes for layer in model.layers if layer.digest == model.model_digest), 0),
        details=model.details,
        context_length_train=model.context_length_train,
        geometry=model.geometry,
    )


@dataclass
class Lease:
    id: str
    runner_address: str
    instance_id: str
    load_duration_ns: int
    context_length: int = 0


async def acquire(
    backends: Backends,
    model: registry_pb2.Model,
    load: common_pb2.LoadOptions,
    keep_alive: float | None,
    request_id: str,
) -> Lease:
    options = common_pb2.LoadOptions()
    options.CopyFrom(load)
    options.adapters.extend(model.adapters)  # the model's ADAPTER layers; requests cannot name their own
    if model.HasField("draft"):  # likewise its DRAFT layer
        options.draft.CopyFrom(model.draft)
    req = scheduler_pb2.AcquireModelRequest(model=model_spec(model), options=options, request_id=request_id)
    if keep_alive is not None:
        req.keep_alive_seconds = -1.0 if keep_alive == float("inf") else keep_alive
    started = time.monotonic_ns()
    try:
        resp = await backends.scheduler.AcquireModel(req)
    except grpc.RpcError as err:
        raise errors.from_rpc(err, model.name) from err
    # Ollama's load_duration is the time spent getting a runner, loaded or not.
    return Lease(
        resp.lease_id, resp.runner_address, resp.instance_id, time.monotonic_ns() - started, resp.context_length
    )


_releasing: set[asyncio.Task[None]] = set()


async def _release(backends: Backends, lease: Lease, runner_failed: bool) -> None:
    with contextlib.suppress(grpc.RpcError):
        await backends.scheduler.ReleaseModel(
            scheduler_pb2.ReleaseModelRequest(lease_id=lease.id, runner_failed=runner_failed), timeout=30
        )


async def release(backends: Backends, lease: Lease, runner_failed: bool = False) -> None:
    """End a lease even when the caller is being cancelled (a client that hung up): the
    release runs in its own task, so a cancelled request can never leak a slot."""
    task = asyncio.create_task(_release(backends, lease, runner_failed))
    _releasing.add(task)
    task.add_done_callback(_releasing.discard)
    await asyncio.shield(task)


async def unload(backends: Backends, model: registry_pb2.Model) -> None:
    try:
        await backends.scheduler.UnloadModel(
            scheduler_pb2.SchedulerUnloadModelRequest(
                model_digest=model.model_digest, manifest_digest=model.manifest_digest
            ),
            timeout=30,
        )
    except grpc.RpcError as err:
        raise errors.from_rpc(err, model.name) from err


@dataclass
class Instance:
    """The leased instance: its runner, id and context length (num_ctx), for the calls a
    generation makes besides Generate. Errors are the raw gRPC ones."""

    runner: runner_pb2_grpc.RunnerServiceStub
    id: str
    context_length: int

    async def tokenize(self, text: str, add_special: bool) -> list[int]:
        """Tokens of `text`, special-token text parsed as the runner parses prompts."""
        req = runner_pb2.TokenizeRequest(instance_id=self.id, text=text, add_special=add_special, parse_special=True)
        return list((await self.runner.Tokenize(req)).tokens)

    async def detokenize(self, tokens: Sequence[int]) -> str:
        resp = await self.runner.Detokenize(runner_pb2.DetokenizeRequest(instance_id=self.id, tokens=tokens))
        return resp.text


# Runs on the leased instance before Generate and may rewrite the request's prompt; runs
# again on the next instance when the first one's runner failed.
Prepare = Callable[[Instance, runner_pb2.GenerateRequest], Awaitable[None]]


@dataclass
class Chunk:
    """One runner chunk, plus the lease's load time on the first one and, on the last one
    when asked for, the tokens of prompt + output (Ollama's `context`)."""

    response: runner_pb2.GenerateResponse
    load_duration_ns: int = 0
    context: list[int] = field(default_factory=list)


def _runner_error(rpc_err: grpc.RpcError) -> tuple[CorralError, bool]:
    """The runner call's error, and whether it means the runner died or restarted (then it
    carries Ollama's "runner has unexpectedly stopped" reason)."""
    err = from_rpc_error(rpc_err)
    failed = err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN) or (
        err.reason in (common_pb2.ERROR_REASON_RUNNER_FAILED, common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND)
    )
    if failed:
        err = CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, err.message, err.code)
    return err, failed


async def _stream(
    instance: Instance, request: runner_pb2.GenerateRequest, context: bool
) -> AsyncGenerator[Chunk, None]:
    """The runner's Generate stream. With `context`, the last chunk carries the tokens of
    prompt + whole output, tokenized as Ollama does (no special tokens added)."""
    call = instance.runner.Generate(request)
    text: list[str] = []
    try:
        async for resp in call:
            chunk = Chunk(resp)
            if context:
                text.append(resp.text)
                if resp.done:
                    chunk.context = await instance.tokenize(request.prompt + "".join(text), add_special=False)
            yield chunk
    finally:
        call.cancel()


async def generate(
    backends: Backends,
    model: registry_pb2.Model,
    request: runner_pb2.GenerateRequest,
    load: common_pb2.LoadOptions,
    keep_alive: float | None,
    prepare: Prepare | None = None,
    context: bool = False,
) -> AsyncGenerator[Chunk, None]:
    """Stream a generation. `prepare` finishes the request on the leased instance. A runner
    that dies before the first token is retried once on whatever runner the scheduler picks
    next; closing the iterator cancels the runner call."""
    request_id = request.request_id or REQUEST_ID.get() or uuid.uuid4().hex
    request.request_id = request_id
    timer = GenerationTimer(model.name)
    for attempt in (1, 2):
        lease = await acquire(backends, model, load, keep_alive, request_id)
        instance = Instance(backends.runner(lease.runner_address), lease.instance_id, lease.context_length)
        request.instance_id = lease.instance_id
        request.num_ctx = lease.context_length  # may be shorter than the instance's
        started = False
        failed = False
        try:
            if prepare is not None:
                await prepare(instance, request)
            async with contextlib.aclosing(_stream(instance, request, context)) as chunks:
                async for chunk in chunks:
                    chunk.load_duration_ns = 0 if started else lease.load_duration_ns
                    resp = chunk.response
                    timer.chunk(bool(resp.text or resp.token_ids))
                    if resp.done:
                        s = resp.stats
                        timer.done(s.prompt_eval_count, s.prompt_cached_count, s.eval_count)
                    yield chunk
                    started = True
            return
        except grpc.RpcError as rpc_err:
            err, failed = _runner_error(rpc_err)
            if failed and not started and attempt == 1:
                log.warning("runner failed before the first token; retrying", extra={"fields": {"id": request_id}})
                backends.reset(lease.runner_address)
                continue
            raise errors.from_corral(err, model.name) from rpc_err
        finally:
            await release(backends, lease, runner_failed=failed)


async def _unary(
    backends: Backends,
    model: registry_pb2.Model,
    request: runner_pb2.EmbedRequest | runner_pb2.RerankRequest,
    load: common_pb2.LoadOptions,
    keep_alive: float | None,
    call: Callable[[runner_pb2_grpc.RunnerServiceStub], Awaitable[T]],
) -> tuple[T, int]:
    """One unary runner call under a lease, retried once if the runner died; returns the
    response and the lease's load time."""
    request.request_id = request.request_id or REQUEST_ID.get() or uuid.uuid4().hex
    for attempt in (1, 2):
        lease = await acquire(backends, model, load, keep_alive, request.request_id)
        request.instance_id = lease.instance_id
        request.num_ctx = lease.context_length  # may be shorter than the instance's
        failed = False
        try:
            return await call(backends.runner(lease.runner_address)), lease.load_duration_ns
        except grpc.RpcError as rpc_err:
            err, failed = _runner_error(rpc_err)
            if failed and attempt == 1:
                backends.reset(lease.runner_address)
                continue
            raise errors.from_corral(err, model.name) from rpc_err
        finally:
            await release(backends, lease, runner_failed=failed)
    raise AssertionError("unreachable")


async def embed(
    backends: Backends,
    model: registry_pb2.Model,
    request: runner_pb2.EmbedRequest,
    load: common_pb2.LoadOptions,
    keep_alive: float | None,
) -> tuple[runner_pb2.EmbedResponse, int]:
    return await _unary(backends, model, request, load, keep_alive, lambda runner: runner.Embed(request))


async def rerank(
    backends: Backends,
    model: registry_pb2.Model,
    request: runner_pb2.RerankRequest,
    load: common_pb2.LoadOptions,
    keep_alive: float | None,
) -> tuple[runner_pb2.RerankResponse, int]:
    return await _unary(backends, model, request, load, keep_alive, lambda runner: runner.Rerank(request))
