"""The runner issue's acceptance checks, through a real gRPC server, with Gemma 3 270M and 8 slots.

Greedy outputs are compared with the same prompt-cache state on both sides (each
prompt is cached once first). llama.cpp's CPU kernels are not batch-invariant: a
row decoded next to seven others gets logprobs that differ by up to ~0.1 from
the same row decoded alone (docs/runner.md), which flips near-ties of this tiny
base model. The prompts are therefore continuations it is sure of (top-1 ahead
of top-2 by more than 0.4 nats at every position), so a difference means the
batcher mixed up sequences, not rounding.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from corral.grpc_server import GrpcService, channel
from corral.v1 import common_pb2, runner_pb2, runner_pb2_grpc
from services.runner.core import Runner
from services.runner.servicer import RunnerServicer, register
from tests.assets import gemma_digest
from tests.runner.conftest import FakeProbe, eventually

INSTANCE = "accept"
Stub = runner_pb2_grpc.RunnerServiceStub
TOPICS = ["the sea", "a mountain", "a library", "the moon", "a garden", "a train", "winter", "a city"]
SURE = [  # (prompt, the start of its greedy continuation)
    ("The days of the week are Monday, Tuesday, Wednesday,", " Thursday, Friday, Saturday"),
    ("The months are January, February, March, April,", " May, June, July"),
    ("Counting: 1, 2, 3, 4, 5, 6,", " 7, 8, 9"),
    ("The alphabet: A, B, C, D, E, F,", " G, H, I"),
    ("one, two, three, four, five,", " six, seven, eight"),
    ("The planets are Mercury, Venus, Earth, Mars,", " Jupiter, Saturn"),
    ("10, 20, 30, 40, 50,", " 60, 70"),
    ("a b c d e f g h", " i j k l"),
]


def turn(text: str) -> str:
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
async def runner() -> AsyncIterator[Runner]:
    r = Runner("accept-runner", FakeProbe())
    yield r
    await r.unload_all()


@pytest.fixture(scope="module")
async def stub(runner: Runner, gemma_path: Path) -> AsyncIterator[Stub]:
    service = GrpcService("runner", "127.0.0.1:0", register(RunnerServicer(runner)))
    await service.start()
    async with channel(f"127.0.0.1:{service.port}") as ch:
        s = runner_pb2_grpc.RunnerServiceStub(ch)
        opts = common_pb2.LoadOptions(num_ctx=1024, num_parallel=8)
        await s.LoadModel(
            runner_pb2.LoadModelRequest(
                instance_id=INSTANCE, model_path=str(gemma_path), model_digest=gemma_digest(), options=opts
            )
        )
        yield s
    await service.stop(grace=0)


def request(prompt: str, **sampling: object) -> runner_pb2.GenerateRequest:
    return runner_pb2.GenerateRequest(
        instance_id=INSTANCE,
        prompt=prompt,
        add_bos=True,
        sampling=common_pb2.SamplingOptions(**sampling),  # type: ignore[arg-type]
    )


async def run(stub: Stub, req: runner_pb2.GenerateRequest) -> tuple[str, runner_pb2.GenerateResponse]:
    text, last = "", runner_pb2.GenerateResponse()
    async for chunk in stub.Generate(req):
        text += chunk.text
        last = chunk
    return text, last


GREEDY = {"temperature": 0.0, "num_predict": 8}
NOISE = {"temperature": 2.0, "top_k": 0, "top_p": 1.0, "seed": 1, "num_predict": 300}


async def test_eight_concurrent_streams_match_their_solo_runs(stub: Stub) -> None:
    prompts = [p for p, _ in SURE]
    for p in prompts:  # cache every prompt: same cache state alone and together
        await run(stub, request(p, num_predict=0))
    alone = [await run(stub, request(p, **GREEDY)) for p in prompts]
    together = await asyncio.gather(*(run(stub, request(p, **GREEDY)) for p in prompts))
    for (a_text, a_last), (t_text, t_last), (_p, expected) in zip(alone, together, SURE, strict=True):
        assert a_text.startswith(expected) and t_text == a_text
        assert t_last.done and t_last.stats.eval_count == a_last.stats.eval_count


async def test_seeded_request_alone_and_inside_a_busy_batch(stub: Stub) -> None:
    prompt = SURE[1][0]
    seeded = {"temperature": 0.0, "seed": 42, "num_predict": 8}
    await run(stub, request(prompt, num_predict=0))
    alone, _ = await run(stub, request(prompt, **seeded))
    calls = [stub.Generate(request(turn(f"A long story about {t}."), **NOISE)) for t in TOPICS[:7]]
    try:
        for c in calls:  # seven streams are generating
            await c.read()
        busy, _ = await run(stub, request(prompt, **seeded))
    finally:
        for c in calls:
            c.cancel()
    assert alone.startswith(SURE[1][1]) and busy == alone


async def test_cancel_mid_stream_frees_the_slot_at_once(stub: Stub, runner: Runner) -> None:
    calls = [stub.Generate(request(turn(f"A long story about {t}."), **NOISE)) for t in TOPICS]
    try:
        for c in calls:
            await c.read()
        assert await eventually(lambda: runner.status()[0].active_sequences == 8)
        calls[0].cancel()
        assert await eventually(lambda: runner.status()[0].active_sequences == 7, timeout=5)
        t0 = time.monotonic()
        quick = stub.Generate(request(turn("Say hi."), temperature=0.0, num_predict=2))
        await quick.read()  # the first token arrives while seven streams keep going
        ttft = time.monotonic() - t0
        assert runner.status()[0].queued_requests == 0
        while await quick.read() != grpc.aio.EOF:
            pass
        assert ttft < 10  # the NOISE streams have hundreds of tokens to go
    finally:
        for c in calls:
            c.cancel()
    assert await eventually(lambda: runner.status()[0].active_sequences == 0)
    assert calls[0].cancelled()


async def test_second_chat_turn_evaluates_only_the_new_tokens(stub: Stub) -> None:
    first = turn("Tell me about lighthouses and the keepers who lived in them.")
    answer, a_last = await run(stub, request(first, **GREEDY))
    new_turn = "<end_of_turn>\n" + turn("And today?")
    second = first + answer + new_turn
    _, b_last = await run(stub, request(second, **GREEDY))
    tok = await stub.Tokenize(runner_pb2.TokenizeRequest(instance_id=INSTANCE, text=new_turn, parse_special=True))
    s = b_last.stats
    assert s.prompt_cached_count >= a_last.stats.prompt_eval_count + a_last.stats.prompt_cached_count
    # The new turn, plus at most the last answer token(s) whose text re-tokenized differently.
    assert len(tok.tokens) <= s.prompt_eval_count <= len(tok.tokens) + 3


async def test_json_schema_request_returns_valid_json(stub: Stub) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    req = request(turn("Give a city and its population as JSON."), temperature=0.0, num_predict=80)
    req.json_schema = json.dumps(schema)
    text, last = await run(stub, req)
    jsonschema.validate(json.loads(text), schema)
    assert last.done_reason == common_pb2.DONE_REASON_STOP


async def test_batch_embeddings_equal_one_by_one(stub: Stub) -> None:
    texts = ["The sky is blue.", "Lighthouses guide ships.", "cats and dogs", "hello"]
    inputs = [runner_pb2.EmbedInput(text=t) for t in texts]
    batch = await stub.Embed(runner_pb2.EmbedRequest(instance_id=INSTANCE, inputs=inputs, normalize=True))
    total = 0
    for item, vec in zip(inputs, batch.embeddings, strict=True):
        one = await stub.Embed(runner_pb2.EmbedRequest(instance_id=INSTANCE, inputs=[item], normalize=True))
        total += one.prompt_eval_count
        assert float(np.dot(vec.values, one.embeddings[0].values)) >= 0.999
    assert batch.prompt_eval_count == total


async def test_logprobs_over_grpc(stub: Stub) -> None:
    req = request(turn("Say yes."), temperature=0.0, num_predict=3)
    req.logprobs, req.top_logprobs = True, 3
    positions = [p async for chunk in stub.Generate(req) for p in chunk.logprobs]
    assert len(positions) == 3
    assert all(len(p.top) == 3 and p.top[0].token == p.sampled.token for p in positions)
