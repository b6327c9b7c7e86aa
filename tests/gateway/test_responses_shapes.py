"""The Responses surface's pure parts: items → chat messages, and the event Builder, whose
SSE events and final Response must parse with the installed `openai` SDK's own types."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from corral.v1 import common_pb2, runner_pb2
from services.gateway.errors import HTTPError
from services.gateway.openai.responses import Builder, check, items_to_chat, new_response
from services.gateway.pipeline import Event

STREAM_EVENT: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)


def final(reason: int = common_pb2.DONE_REASON_STOP) -> runner_pb2.GenerateResponse:
    r = runner_pb2.GenerateResponse(done=True, done_reason=reason)  # type: ignore[arg-type]
    r.stats.prompt_eval_count, r.stats.eval_count = 12, 5
    return r


def run(events: list[Event], body: dict[str, object] | None = None) -> tuple[list[dict[str, object]], Builder]:
    b = Builder(new_response({"model": "m", **(body or {})}))
    out = [b.event("response.created", response=dict(b.response, output=[]))]
    for ev in events:
        out += b.add(ev)
    out += b.close()
    b.finish(events[-1])
    out.append(b.event("response.completed", response=b.response))
    return [data for _, data in out], b


def test_reasoning_message_and_call_events_parse_with_the_sdk() -> None:
    call = {"id": "call_1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}
    events, b = run(
        [
            Event(thinking="Let me "),
            Event(thinking="think."),
            Event(content="Hello"),
            Event(content=" there"),
            Event(tool_calls=[call], done=True, final=final()),
        ]
    )
    parsed = [STREAM_EVENT.validate_python(e) for e in events]
    assert [p.sequence_number for p in parsed] == list(range(len(parsed)))
    kinds = [p.type for p in parsed]
    assert kinds == [
        "response.created",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    r = Response.model_validate(b.response)
    assert [i.type for i in r.output] == ["reasoning", "message", "function_call"]
    assert r.output_text == "Hello there" and r.status == "completed"
    fc = r.output[2]
    assert fc.type == "function_call" and fc.call_id == "call_1" and json.loads(fc.arguments) == {"city": "Paris"}
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (12, 5, 17)


def test_a_cut_answer_is_incomplete() -> None:
    _, b = run([Event(content="Hel"), Event(done=True, final=final(common_pb2.DONE_REASON_LENGTH))])
    r = Response.model_validate(b.response)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"


def test_leading_whitespace_alone_opens_no_message() -> None:
    call = {"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {}}}
    _, b = run([Event(content="\n"), Event(tool_calls=[call], done=True, final=final())])
    assert [i["type"] for i in b.output] == ["function_call"]


def test_items_become_chat_messages() -> None:
    msgs = items_to_chat(
        [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "use the tool"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
        ]
    )
    assert msgs[0] == {"role": "user", "content": [{"type": "text", "text": "Weather?"}]}
    assert msgs[1]["role"] == "assistant" and msgs[1]["reasoning"] == "use the tool"
    assert msgs[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert msgs[2] == {"role": "tool", "tool_call_id": "c1", "content": "sunny"}
    assert msgs[3]["content"] == [{"type": "text", "text": "Sunny."}]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"model": "m", "text": {"format": [None]}},
        {"model": "m", "reasoning": {"effort": {}}},
        {"model": "m", "max_output_tokens": 0},
        {"model": "m", "max_output_tokens": True},
        {"model": "m", "instructions": 3},
    ],
)
def test_wrong_types_are_400(body: dict[str, object]) -> None:
    with pytest.raises(HTTPError) as exc:
        check(body)
    assert exc.value.status == 400
