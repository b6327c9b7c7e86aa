"""The unmodified `openai` SDK drives /v1/responses against the real stack and Gemma."""

from __future__ import annotations

import json

import grpc
import httpx
import openai
import pytest

from corral.v1 import registry_pb2, registry_pb2_grpc
from tests.e2e.test_gateway_api import CALL_SCHEMA, tool_model  # noqa: F401  (fixture)
from tests.stack import Stack

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
EXTRA = {"options": {"num_ctx": 1024, "seed": 7}}
CALL_FORMAT = {"format": {"type": "json_schema", "name": "call", "schema": CALL_SCHEMA}}


@pytest.fixture(scope="module")
def oai(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="anything")


def test_create_plain_then_streamed_matches(oai: openai.OpenAI, gemma: str) -> None:
    r = oai.responses.create(
        model=gemma, input="Say hi", instructions="Be brief.", max_output_tokens=8, temperature=0, extra_body=EXTRA
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output_text
    assert r.usage is not None and r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    with oai.responses.stream(
        model=gemma, input="Say hi", instructions="Be brief.", max_output_tokens=8, temperature=0, extra_body=EXTRA
    ) as stream:
        events = list(stream)
    kinds = [ev.type for ev in events]
    # 8 tokens may cut the answer: OpenAI then ends with response.incomplete, which the SDK's
    # get_final_response() does not take, so read the last event's response
    final = events[-1].response  # type: ignore[union-attr]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert "response.output_text.delta" in kinds
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert final.output_text == r.output_text
    raw = list(
        oai.responses.create(
            model=gemma, input="Say hi", max_output_tokens=4, temperature=0, stream=True, extra_body=EXTRA
        )
    )
    assert [e.sequence_number for e in raw] == list(range(len(raw)))


def test_function_call_then_previous_response_id(oai: openai.OpenAI, stack: Stack, tool_model: str) -> None:  # noqa: F811
    r = oai.responses.create(
        model=tool_model,
        input="Weather in Paris?",
        tools=[WEATHER],  # type: ignore[list-item]
        text=CALL_FORMAT,  # type: ignore[arg-type]
        max_output_tokens=40,
        temperature=0,
        extra_body=EXTRA,
    )
    calls = [i for i in r.output if i.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments)["city"] in ("Paris", "Tokyo")
    follow = oai.responses.create(
        model=tool_model,
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21C"}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=16,
        temperature=0,
        extra_body=EXTRA,
    )
    assert follow.previous_response_id == r.id and follow.status in ("completed", "incomplete")
    # the registry stored the whole conversation the follow-up answered
    with grpc.insecure_channel(stack.socket("registry")) as ch:
        got = registry_pb2_grpc.RegistryServiceStub(ch).GetResponse(registry_pb2.GetResponseRequest(id=follow.id))
    kinds = [i.get("type") for i in json.loads(got.input_json)]
    assert got.found and kinds == ["message", "function_call", "function_call_output"]
    with oai.responses.stream(
        model=tool_model,
        input="Weather in Tokyo?",
        tools=[WEATHER],  # type: ignore[list-item]
        text=CALL_FORMAT,  # type: ignore[arg-type]
        max_output_tokens=40,
        temperature=0,
        extra_body=EXTRA,
    ) as stream:
        kinds = [ev.type for ev in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    call = next(i for i in final.output if i.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] in ("Paris", "Tokyo")
    stored = oai.responses.retrieve(final.id)  # a streamed response is stored before response.completed
    assert [i.type for i in stored.output] == [i.type for i in final.output]


def test_stored_response_get_delete_and_unknown(oai: openai.OpenAI, stack: Stack, gemma: str) -> None:
    r = oai.responses.create(model=gemma, input="Say hi", max_output_tokens=4, temperature=0, extra_body=EXTRA)
    got = oai.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text
    oai.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model=gemma, input="x", previous_response_id=r.id)
    resp = httpx.delete(stack.url + f"/v1/responses/{r.id}")
    assert resp.status_code == 404 and "not found" in resp.json()["error"]["message"]
    unstored = oai.responses.create(
        model=gemma, input="Say hi", max_output_tokens=2, store=False, temperature=0, extra_body=EXTRA
    )
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(unstored.id)
