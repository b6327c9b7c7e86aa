"""The runner's grammar building (constraints.py) without gRPC, then the grammars on the real Gemma 3 270M:
tool calls required/named/forbidden, raw GBNF with llama.cpp's parse error, the thinking budget."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.constraints import (
    Constraint,
    Thinking,
    ToolCalls,
    ToolSpec,
    call_schema,
    free_text_until,
    resolve,
)
from services.runner.engine import Instance
from services.runner.jobs import GenerateSpec
from services.runner.native import LoadSpec
from services.runner.sampling import SamplingParams
from tests.runner.conftest import collect

WEATHER = ToolSpec(
    "get_weather",
    json.dumps({"type": "object", "properties": {"city": {"enum": ["Paris", "Tokyo"]}}, "required": ["city"]}),
)
TIME = ToolSpec("get_time", json.dumps({"type": "object", "properties": {}}))
TAGS = Thinking("<think>", "</think>")


def turn(text: str, tail: str = "") -> str:
    return f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n{tail}"


def test_resolve_builds_each_kind() -> None:
    assert resolve(None, None).gbnf == ""
    assert resolve(None, None, legacy_grammar='root ::= "x"').gbnf == 'root ::= "x"'
    assert re.search(r"^root\s*::=", resolve(Constraint(json=True), None).gbnf, re.M)
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert re.search(r"^root ::=", resolve(Constraint(json_schema=schema), None).gbnf, re.M)
    # a raw grammar is never wrapped, even with thinking on
    assert resolve(Constraint(gbnf='root ::= "y"'), TAGS).gbnf == 'root ::= "y"'
    wrapped = resolve(Constraint(json_schema=schema), TAGS).gbnf
    assert wrapped.startswith('root ::= ("<think>"') and re.search(r"^answer ::=", wrapped, re.M)
    started = resolve(Constraint(json=True), Thinking("<think>", "</think>", started=True)).gbnf
    assert started.startswith('root ::= think-body "</think>"')


def test_tool_call_grammars_follow_the_template_format() -> None:
    required = ToolCalls("required", (WEATHER, TIME), open_tag="<tool_call>", close_tag="</tool_call>")
    g = resolve(Constraint(tool_calls=required), None).gbnf
    assert 'one-call ::= "<tool_call>"' in g and '"</tool_call>"' in g and re.search(r"^call ::=", g, re.M)
    bare = resolve(Constraint(tool_calls=ToolCalls("required", (WEATHER,))), None).gbnf
    assert bare.startswith("root ::= call")
    listed = resolve(Constraint(tool_calls=ToolCalls("required", (WEATHER,), open_tag="[")), None).gbnf
    assert '"["' in listed and '","' in listed
    none = resolve(Constraint(tool_calls=ToolCalls("none", (WEATHER,), open_tag="<tool_call>")), None).gbnf
    assert none == f"root ::= {free_text_until('<tool_call>')}\n"
    # a tool without parameters takes exactly {}; several tools are alternatives
    schema = call_schema(ToolCalls("required", (WEATHER, TIME), arguments_key="parameters"))
    assert [c["properties"]["name"]["const"] for c in schema["anyOf"]] == ["get_weather", "get_time"]
    assert schema["anyOf"][1]["properties"]["parameters"]["additionalProperties"] is False
    for bad in (
        ToolCalls("required", ()),
        ToolCalls("sometimes", (WEATHER,)),
        ToolCalls("required", (ToolSpec("f", "{x"),)),
    ):
        with pytest.raises(CorralError) as exc:
            resolve(Constraint(tool_calls=bad), None)
        assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT


@pytest.fixture(scope="module")
async def inst(gemma_path: Path) -> AsyncIterator[Instance]:
    instance = Instance("constraints", LoadSpec(str(gemma_path), num_ctx=512, num_parallel=4))
    await instance.start()
    yield instance
    await instance.stop()


async def test_required_and_named_tool_calls_parse(inst: Instance) -> None:
    tc = ToolCalls("required", (WEATHER, TIME), open_tag="<tool_call>", close_tag="</tool_call>")
    params = SamplingParams(temperature=1.0, seed=3, num_predict=60)
    r = await collect(
        inst.generate(GenerateSpec(prompt=turn("Hi!"), params=params, constraint=Constraint(tool_calls=tc)))
    )
    m = re.fullmatch(
        r"\s*<tool_call>\s*(\{.*\})\s*</tool_call>\s*", r.text.split("</tool_call>")[0] + "</tool_call>", re.S
    )
    assert m, r.text
    call = json.loads(m.group(1))
    assert call["name"] in ("get_weather", "get_time")
    named = ToolCalls("required", (TIME,))
    r = await collect(
        inst.generate(GenerateSpec(prompt=turn("Hi!"), params=params, constraint=Constraint(tool_calls=named)))
    )
    assert json.loads(r.text) == {"name": "get_time", "arguments": {}}
    assert r.last.done_reason == common_pb2.DONE_REASON_STOP


async def test_forbidden_tool_call_and_bad_grammar(inst: Instance) -> None:
    none = ToolCalls("none", (WEATHER,), open_tag="{")
    params = SamplingParams(temperature=0, num_predict=8)
    prompt = turn('Reply with the JSON {"name": "get_weather"} and nothing else.')
    r = await collect(inst.generate(GenerateSpec(prompt=prompt, params=params, constraint=Constraint(tool_calls=none))))
    assert not r.text.lstrip().startswith("{"), r.text
    for bad, words in (
        ('root ::= "x', "unterminated string literal at line 1, column 10"),
        ('start ::= "x"', "no 'root' rule"),
        ("root ::= undefined-rule", "undefined rule 'undefined-rule'"),
        ('root ::= ("a"', "unbalanced '('"),
    ):
        with pytest.raises(CorralError) as exc:
            await collect(inst.generate(GenerateSpec(prompt=turn("x"), constraint=Constraint(gbnf=bad))))
        assert exc.value.reason == common_pb2.ERROR_REASON_INVALID_ARGUMENT
        assert exc.value.message.startswith("invalid grammar: ") and words in exc.value.message, exc.value


async def n_tokens(inst: Instance, text: str) -> int:
    return await inst.call(lambda nm: len(nm.tokenize(text, False, True)))


async def test_thinking_budget_closes_the_block(inst: Instance) -> None:
    # The prompt opens the block; a budget of 6 tokens forces "</think>" after 6 tokens of thought.
    t = Thinking("<think>", "</think>", started=True, budget_tokens=6)
    params = SamplingParams(temperature=0.8, seed=1, num_predict=40)
    prompt = turn("Think about the sea, then answer.", "<think>\n")
    r = await collect(inst.generate(GenerateSpec(prompt=prompt, params=params, thinking=t)))
    assert "</think>" in r.text, r.text
    thought = r.text.split("</think>")[0]
    assert await n_tokens(inst, thought) <= 7  # 6 tokens; re-tokenizing may merge or split one
    # with a grammar too, the forced tag is one the grammar accepts, then the answer is JSON
    r = await collect(
        inst.generate(GenerateSpec(prompt=prompt, params=params, thinking=t, constraint=Constraint(json=True)))
    )
    thought, answer = r.text.split("</think>", 1)
    assert await n_tokens(inst, thought) <= 7
    assert answer.strip()[:1] in '{["0123456789-tfn'


async def test_no_shift_stops_when_the_context_fills(gemma_path: Path) -> None:
    inst = Instance("noshift", LoadSpec(str(gemma_path), num_ctx=64, num_parallel=1))
    await inst.start()
    try:
        params = SamplingParams(temperature=1.0, seed=2, num_predict=200)
        spec = GenerateSpec(prompt=turn("Write a long story."), params=params, add_bos=True, shift=False)
        r = await collect(inst.generate(spec))
        assert r.last.done_reason == common_pb2.DONE_REASON_LENGTH
        assert r.last.stats is not None
        assert r.last.stats.prompt_eval_count + r.last.stats.eval_count <= 65  # the last sampled token is never decoded
    finally:
        await inst.stop()
