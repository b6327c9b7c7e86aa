"""Chat history truncation and the generate `context` field, with fake token counters and a
fake runner/scheduler (no gRPC): which suffix is kept, how often the tokenizer is asked,
and that the hooks run on the leased instance."""

from __future__ import annotations

import functools
import math
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from corral.v1 import common_pb2, registry_pb2, runner_pb2, scheduler_pb2
from services.gateway import inference, pipeline, prompts, tokens
from services.gateway.prompts import Prompt

MODEL = registry_pb2.Model(name="m", add_bos_token=True, bos_token="<bos>")


def msg(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


class Counter:
    """`count(k)`: the tokens left after dropping the `k` oldest of `sizes`, plus `base`."""

    def __init__(self, sizes: Sequence[int], base: int = 0) -> None:
        self.sizes, self.base, self.calls = list(sizes), base, 0

    async def __call__(self, k: int) -> int:
        self.calls += 1
        return self.base + sum(self.sizes[k:])


def linear(sizes: Sequence[int], base: int, limit: int) -> int:
    """Ollama's original loop: the longest suffix that fits, else everything droppable."""
    return next((k for k in range(len(sizes)) if base + sum(sizes[k:]) < limit), len(sizes))


async def test_the_full_prompt_that_fits_costs_one_count() -> None:
    count = Counter([10, 10, 10], base=5)
    assert await tokens.fewest_dropped(3, count, limit=100) == 0
    assert count.calls == 1


async def test_nothing_droppable_costs_nothing() -> None:
    count = Counter([], base=500)
    assert await tokens.fewest_dropped(0, count, limit=100) == 0
    assert count.calls == 0


async def test_when_nothing_fits_every_droppable_message_goes() -> None:
    count = Counter([50, 50, 50, 50], base=200)  # the kept messages alone exceed the limit
    assert await tokens.fewest_dropped(4, count, limit=100) == 4


@pytest.mark.parametrize("seed", range(200))
async def test_binary_search_keeps_the_longest_fitting_suffix(seed: int) -> None:
    rnd = random.Random(seed)
    n = rnd.randint(1, 40)
    sizes = [rnd.randint(0, 60) for _ in range(n)]
    base, limit = rnd.randint(1, 40), rnd.randint(1, 600)
    count = Counter(sizes, base)
    assert await tokens.fewest_dropped(n, count, limit) == linear(sizes, base, limit)
    assert count.calls <= 1 + math.ceil(math.log2(n))


def test_dropping_keeps_system_messages_and_the_last_one() -> None:
    msgs = [msg("system", "s1"), msg("user", "u1"), msg("assistant", "a1"), msg("system", "s2")]
    msgs += [msg("user", "u2"), msg("assistant", "a2"), msg("user", "u3")]
    assert tokens.droppable(msgs) == 4
    assert [m["content"] for m in tokens.drop_oldest(msgs, 3)] == ["s1", "s2", "a2", "u3"]
    assert [m["content"] for m in tokens.drop_oldest(msgs, 4)] == ["s1", "s2", "u3"]
    assert tokens.drop_oldest(msgs, 0) == msgs
    assert tokens.droppable([msg("user", "only")]) == 0
    assert tokens.droppable([msg("user", "a"), msg("system", "last")]) == 1  # the last stays, whatever it is


def test_dropping_k_is_ollamas_cut_at_an_index() -> None:
    roles = ["system", "user", "assistant", "system", "user", "tool", "assistant", "user"]
    msgs = [msg(r, str(i)) for i, r in enumerate(roles)]
    for start in range(len(msgs)):
        ollama = [m for m in msgs[:start] if m["role"] == "system"] + msgs[start:]
        k = sum(1 for m in msgs[:start] if m["role"] != "system")
        assert tokens.drop_oldest(msgs, k) == ollama


# --- the runner side, faked ---------------------------------------------------


@dataclass
class FakeRunner:
    """Tokenize: one token per word (+1 for BOS); Detokenize: words `t<id>`."""

    tokenized: list[runner_pb2.TokenizeRequest] = field(default_factory=list)
    outputs: list[str] = field(default_factory=lambda: ["Hello", " there", ""])
    generated: list[runner_pb2.GenerateRequest] = field(default_factory=list)
    fail_first_tokenize: bool = False

    async def Tokenize(self, req: runner_pb2.TokenizeRequest) -> runner_pb2.TokenizeResponse:
        self.tokenized.append(req)
        if self.fail_first_tokenize and len(self.tokenized) == 1:
            raise FakeRpcError()
        n = len(req.text.split()) + (1 if req.add_special else 0)
        return runner_pb2.TokenizeResponse(tokens=list(range(n)))

    async def Detokenize(self, req: runner_pb2.DetokenizeRequest) -> runner_pb2.DetokenizeResponse:
        return runner_pb2.DetokenizeResponse(text="".join(f"t{t} " for t in req.tokens))

    def Generate(self, req: runner_pb2.GenerateRequest) -> FakeCall:
        self.generated.append(runner_pb2.GenerateRequest.FromString(req.SerializeToString()))
        return FakeCall(self.outputs)


class FakeCall:
    def __init__(self, outputs: list[str]) -> None:
        self.outputs, self.cancelled = outputs, False

    async def __aiter__(self) -> AsyncIterator[runner_pb2.GenerateResponse]:
        for i, text in enumerate(self.outputs):
            yield runner_pb2.GenerateResponse(text=text, done=i == len(self.outputs) - 1)

    def cancel(self) -> None:
        self.cancelled = True


class FakeRpcError(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "runner gone"

    def trailing_metadata(self) -> tuple[()]:
        return ()


@dataclass
class FakeScheduler:
    context_length: int
    leases: int = 0
    released: list[scheduler_pb2.ReleaseModelRequest] = field(default_factory=list)

    async def AcquireModel(self, req: scheduler_pb2.AcquireModelRequest) -> scheduler_pb2.AcquireModelResponse:
        self.leases += 1
        return scheduler_pb2.AcquireModelResponse(
            lease_id=f"l{self.leases}",
            runner_address="r",
            instance_id=f"i{self.leases}",
            context_length=self.context_length,
        )

    async def ReleaseModel(self, req: scheduler_pb2.ReleaseModelRequest, timeout: float) -> Any:
        self.released.append(req)
        return scheduler_pb2.ReleaseModelResponse()


@dataclass
class FakeBackends:
    scheduler: FakeScheduler
    fake_runner: FakeRunner
    resets: list[str] = field(default_factory=list)

    def runner(self, address: str) -> FakeRunner:
        return self.fake_runner

    def reset(self, address: str) -> None:
        self.resets.append(address)


def instance(runner: FakeRunner, context_length: int) -> inference.Instance:
    return inference.Instance(runner, "i", context_length)  # type: ignore[arg-type]


def chat_history(msgs: list[dict[str, Any]]) -> tokens.History:
    return tokens.History(msgs, functools.partial(prompts.render_chat, MODEL))


LONG = " ".join(["word"] * 100)
CHAT = [msg("system", "Be brief."), msg("user", LONG), msg("assistant", LONG), msg("user", "Why?")]


async def test_fit_history_renders_and_counts_on_the_instance() -> None:
    runner = FakeRunner()
    history = chat_history(CHAT)
    full = history.render(CHAT)
    fitted = await tokens.fit_history(instance(runner, 50), history, full)
    assert fitted.text == "System: Be brief.\n\nUser: Why?\n\nAssistant:"
    assert all(r.add_special and r.parse_special for r in runner.tokenized)
    assert len(runner.tokenized) <= 1 + math.ceil(math.log2(2))


async def test_a_short_or_fitting_chat_asks_nothing_or_once() -> None:
    runner = FakeRunner()
    history = chat_history(CHAT)
    full = history.render(CHAT)
    assert await tokens.fit_history(instance(runner, 4096), history, full) == full
    assert runner.tokenized == []  # fewer bytes than num_ctx: no call
    assert await tokens.fit_history(instance(runner, 300), history, full) == full
    assert len(runner.tokenized) == 1  # ~210 words fit 300 tokens: one call


async def test_with_context_prefixes_the_detokenized_text() -> None:
    plain = Prompt("Next?", True, "plain")
    out = await tokens.with_context(instance(FakeRunner(), 100), MODEL, [1, 2], plain)
    assert out == Prompt("t1 t2 Next?", True, "plain")
    bos = await tokens.with_context(instance(FakeRunner(), 100), MODEL, [1], Prompt("<bos>x", False, "go"))
    assert bos.text == "t1 <bos>x" and bos.add_bos  # BOS decided on the whole text


def job(**kw: Any) -> pipeline.Job:
    fields: dict[str, Any] = {
        "model": MODEL,
        "prompt": Prompt("", True),
        "sampling": common_pb2.SamplingOptions(),
        "load": common_pb2.LoadOptions(),
        "keep_alive": None,
    }
    return pipeline.Job(**{**fields, **kw})


async def run(backends: FakeBackends, j: pipeline.Job) -> list[pipeline.Event]:
    return [ev async for ev in pipeline.run(backends, j)]  # type: ignore[arg-type]


async def test_chat_truncation_runs_on_the_leased_instance_unless_truncate_is_false() -> None:
    history = chat_history(CHAT)
    full = history.render(CHAT)
    backends = FakeBackends(FakeScheduler(context_length=50), FakeRunner())
    events = await run(backends, job(prompt=full, history=history))
    assert backends.fake_runner.generated[0].prompt == "System: Be brief.\n\nUser: Why?\n\nAssistant:"
    assert {r.instance_id for r in backends.fake_runner.tokenized} == {"i1"}
    assert events[-1].done and events[-1].context == []  # chat returns no context
    assert len(backends.scheduler.released) == 1

    backends = FakeBackends(FakeScheduler(context_length=50), FakeRunner())
    assert pipeline.preparer(job(prompt=full, history=history, truncate=False)) is None
    await run(backends, job(prompt=full, history=history, truncate=False))
    assert backends.fake_runner.generated[0].prompt == full.text
    assert backends.fake_runner.tokenized == []


async def test_generate_context_is_written_first_and_returned_on_the_last_event() -> None:
    backends = FakeBackends(FakeScheduler(context_length=1000), FakeRunner())
    events = await run(backends, job(prompt=Prompt("Why?", True, "plain"), context=[7, 8], return_context=True))
    assert backends.fake_runner.generated[0].prompt == "t7 t8 Why?"
    final = backends.fake_runner.tokenized[-1]
    assert final.text == "t7 t8 Why?Hello there" and not final.add_special and final.parse_special
    assert [ev.context for ev in events] == [[], [], [0, 1, 2, 3]]
    assert len(backends.scheduler.released) == 1


async def test_a_runner_that_fails_while_preparing_is_retried_on_the_next_lease() -> None:
    history = chat_history(CHAT)
    runner = FakeRunner(fail_first_tokenize=True)
    backends = FakeBackends(FakeScheduler(context_length=50), runner)
    events = await run(backends, job(prompt=history.render(CHAT), history=history))
    assert events[-1].done
    assert [r.runner_failed for r in backends.scheduler.released] == [True, False]
    assert backends.resets == ["r"]  # the retry connects to the runner afresh
    assert runner.generated[0].instance_id == "i2"
    assert runner.generated[0].prompt == "System: Be brief.\n\nUser: Why?\n\nAssistant:"
