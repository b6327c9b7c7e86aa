"""RunnerService through a real gRPC server and stub, with the real Gemma model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from corral.errors import from_rpc_error
from corral.grpc_server import GrpcService, channel
from corral.v1 import common_pb2, runner_pb2, runner_pb2_grpc
from services.runner.core import Runner
from services.runner.jobs import GenerateSpec, Job
from services.runner.sampling import SamplingParams
from services.runner.servicer import RunnerServicer, generate_spec, register
from tests.assets import gemma_digest
from tests.runner.conftest import PROMPT, FakeProbe, eventually

INSTANCE = "inst-1"


@pytest.fixture(scope="module")
async def runner() -> AsyncIterator[Runner]:
    r = Runner("test-runner", FakeProbe())
    yield r
    await r.unload_all()


@pytest.fixture(scope="module")
async def stub(runner: Runner, gemma_path: Path) -> AsyncIterator[runner_pb2_grpc.RunnerServiceStub]:
    service = GrpcService("runner", "127.0.0.1:0", register(RunnerServicer(runner)))
    await service.start()
    async with channel(f"127.0.0.1:{service.port}") as ch:
        s = runner_pb2_grpc.RunnerServiceStub(ch)
        resp = await s.LoadModel(
            runner_pb2.LoadModelRequest(
                instance_id=INSTANCE,
                model_path=str(gemma_path),
                model_digest=gemma_digest(),
                options=common_pb2.LoadOptions(num_ctx=1024, num_parallel=2),
            )
        )
        assert resp.instance_id == INSTANCE
        yield s
    await service.stop(grace=0)


def gen_request(**sampling: object) -> runner_pb2.GenerateRequest:
    return runner_pb2.GenerateRequest(
        instance_id=INSTANCE,
        prompt=PROMPT,
        add_bos=True,
        sampling=common_pb2.SamplingOptions(**sampling),  # type: ignore[arg-type]
        request_id="req-1",
    )


def test_generate_spec_from_the_request() -> None:
    """Unset proto fields give GenerateSpec's defaults; the Job resolves the logprobs options."""
    assert generate_spec(runner_pb2.GenerateRequest(instance_id=INSTANCE)) == GenerateSpec()
    req = runner_pb2.GenerateRequest(
        instance_id=INSTANCE,
        prompt="p",
        prompt_tokens=[2, 9259],
        add_bos=True,
        sampling=common_pb2.SamplingOptions(temperature=0.0, num_predict=5, stop=["x"]),
        grammar="g",
        json_schema="{}",
        top_logprobs=30,
        truncate=True,
        request_id="req-1",
    )
    spec = generate_spec(req)
    assert spec == GenerateSpec(
        prompt="p",
        prompt_tokens=(2, 9259),
        add_bos=True,
        params=SamplingParams(temperature=0.0, num_predict=5, stop=("x",)),
        grammar="g",
        json_schema="{}",
        top_logprobs=30,
        truncate=True,
        request_id="req-1",
    )
    job = Job(spec, emit=lambda _ev: None)
    assert (job.logprobs, job.top_logprobs) == (True, 20)  # top_logprobs > 0 implies logprobs; at most 20
    plain = Job(GenerateSpec(top_logprobs=-1), emit=lambda _ev: None)
    assert (plain.logprobs, plain.top_logprobs) == (False, 0)


async def test_load_is_idempotent_and_reports_memory(stub: runner_pb2_grpc.RunnerServiceStub, gemma_path: Path) -> None:
    resp = await stub.LoadModel(
        runner_pb2.LoadModelRequest(instance_id=INSTANCE, model_path=str(gemma_path), model_digest=gemma_digest())
    )
    assert (resp.context_length, resp.num_parallel) == (1024, 2)
    m = resp.memory
    assert m.weights_bytes > 200_000_000 and m.kv_cache_bytes > 0
    assert m.total_bytes == m.weights_bytes + m.kv_cache_bytes + m.compute_bytes
    assert m.gpu_bytes == 0 and not m.devices  # a CPU runner has no per-GPU part
    assert resp.load_duration_ns > 0


async def test_generate_streams_and_ends_with_stats(stub: runner_pb2_grpc.RunnerServiceStub) -> None:
    chunks = [c async for c in stub.Generate(gen_request(temperature=0.0, num_predict=16))]
    assert len(chunks) >= 2
    assert all(not c.done for c in chunks[:-1])
    last = chunks[-1]
    assert last.done and last.done_reason in (common_pb2.DONE_REASON_STOP, common_pb2.DONE_REASON_LENGTH)
    assert "".join(c.text for c in chunks)
    assert last.stats.eval_count == sum(len(c.token_ids) for c in chunks) > 0
    assert last.stats.prompt_eval_count + last.stats.prompt_cached_count == 17
    assert last.stats.eval_duration_ns > 0 and last.stats.prompt_eval_duration_ns > 0


async def test_cancelling_the_call_frees_the_sequence(stub: runner_pb2_grpc.RunnerServiceStub, runner: Runner) -> None:
    # Noise sampling: it would run for well over a minute if not cancelled.
    call = stub.Generate(gen_request(temperature=2.0, top_k=0, top_p=1.0, seed=1, num_predict=4000))
    got = 0
    async for chunk in call:
        assert not chunk.done
        got += 1
        if got == 2:
            break
    call.cancel()
    assert await eventually(lambda: runner.status()[0].active_sequences == 0, timeout=5)
    status = await stub.GetStatus(runner_pb2.GetStatusRequest())
    assert status.instances[0].active_sequences == 0


async def test_unknown_instance_is_not_found(stub: runner_pb2_grpc.RunnerServiceStub) -> None:
    req = gen_request()
    req.instance_id = "nope"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in stub.Generate(req):
            pass
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert from_rpc_error(exc.value).reason == common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as exc2:
        await stub.Tokenize(runner_pb2.TokenizeRequest(instance_id="nope", text="hi"))
    assert from_rpc_error(exc2.value).reason == common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND


async def test_prompt_too_long_is_invalid_argument(stub: runner_pb2_grpc.RunnerServiceStub) -> None:
    req = runner_pb2.GenerateRequest(instance_id=INSTANCE, prompt_tokens=[9259] * 2000)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in stub.Generate(req):
            pass
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert from_rpc_error(exc.value).reason == common_pb2.ERROR_REASON_PROMPT_TOO_LONG


async def test_tokenize_and_detokenize(stub: runner_pb2_grpc.RunnerServiceStub) -> None:
    tok = await stub.Tokenize(
        runner_pb2.TokenizeRequest(
            instance_id=INSTANCE, text="<start_of_turn>Hi there", add_special=True, parse_special=True
        )
    )
    assert list(tok.tokens[:2]) == [2, 105]
    text = await stub.Detokenize(runner_pb2.DetokenizeRequest(instance_id=INSTANCE, tokens=tok.tokens))
    assert text.text == "<bos><start_of_turn>Hi there"


async def test_embed_with_a_generative_model(stub: runner_pb2_grpc.RunnerServiceStub) -> None:
    """A generative model embeds through its own mean-pooled context; errors map to gRPC codes."""
    inputs = [runner_pb2.EmbedInput(text="hi"), runner_pb2.EmbedInput(tokens=runner_pb2.TokenIds(ids=[2, 9259]))]
    resp = await stub.Embed(runner_pb2.EmbedRequest(instance_id=INSTANCE, inputs=inputs, normalize=True))
    assert len(resp.embeddings) == 2 and len(resp.embeddings[0].values) == 640
    assert resp.prompt_eval_count == 2 + 2  # <bos> hi, and the two ids
    bad_ids = runner_pb2.TokenIds(ids=[-1])
    bad = runner_pb2.EmbedRequest(instance_id=INSTANCE, inputs=[runner_pb2.EmbedInput(tokens=bad_ids)])
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.Embed(bad)
    assert from_rpc_error(exc.value).reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT


async def test_get_status(stub: runner_pb2_grpc.RunnerServiceStub, gemma_path: Path) -> None:
    status = await stub.GetStatus(runner_pb2.GetStatusRequest())
    assert status.runner_id == "test-runner"
    [dev] = status.devices
    assert (dev.id, dev.name, dev.host) == ("fake:0", "Fake CPU", "testhost")
    assert dev.kind == common_pb2.DEVICE_KIND_CPU
    [inst] = status.instances
    assert (inst.instance_id, inst.model_path) == (INSTANCE, str(gemma_path))
    assert (inst.context_length, inst.num_parallel, inst.queued_requests) == (1024, 2, 0)
    assert inst.memory.total_bytes > 0


async def test_bad_model_fails_to_load(stub: runner_pb2_grpc.RunnerServiceStub, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.LoadModel(runner_pb2.LoadModelRequest(instance_id="bad", model_path=str(bad)))
    assert from_rpc_error(exc.value).reason == common_pb2.ERROR_REASON_LOAD_FAILED
    status = await stub.GetStatus(runner_pb2.GetStatusRequest())
    assert [i.instance_id for i in status.instances] == [INSTANCE]


async def test_unload(stub: runner_pb2_grpc.RunnerServiceStub) -> None:
    """Runs last in this module: the instance goes away."""
    assert not (await stub.UnloadModel(runner_pb2.UnloadModelRequest(instance_id="nope"))).unloaded
    assert (await stub.UnloadModel(runner_pb2.UnloadModelRequest(instance_id=INSTANCE))).unloaded
    status = await stub.GetStatus(runner_pb2.GetStatusRequest())
    assert not status.instances
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in stub.Generate(gen_request()):
            pass
    assert from_rpc_error(exc.value).reason == common_pb2.ERROR_REASON_INSTANCE_NOT_FOUND
    await asyncio.sleep(0)
