"""A tool result keeps its call id and gains its tool's name on every surface (templates read
`.ToolCallID`/`.ToolName` or Jinja `tool_call_id`/`name`)."""

from __future__ import annotations

from typing import Any

from services.gateway.anthropic.messages import MessagesRequest
from services.gateway.anthropic.messages import to_ollama_messages as to_ollama_from_anthropic
from services.gateway.openai.chat import ChatMessage
from services.gateway.openai.chat import to_ollama_messages as to_ollama_from_openai
from services.gateway.openai.responses import items_to_chat


def from_openai(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return to_ollama_from_openai([ChatMessage.model_validate(m) for m in messages])


def from_anthropic(body: dict[str, Any]) -> list[dict[str, Any]]:
    return to_ollama_from_anthropic(MessagesRequest.model_validate(body))


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def _tool(messages: list[dict[str, object]]) -> dict[str, object]:
    return next(m for m in messages if m["role"] == "tool")


def test_openai_tool_message_takes_its_name_from_the_call() -> None:
    msgs = from_openai(
        [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ]
    )
    assert _tool(msgs) == {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "tool_name": "get_weather"}
    assert msgs[1]["tool_calls"][0]["id"] == "call_1"


def test_openai_explicit_name_wins_and_unknown_id_gives_no_name() -> None:
    named = from_openai([{"role": "tool", "tool_call_id": "x", "name": "f", "content": "1"}])
    assert _tool(named)["tool_name"] == "f"
    unknown = from_openai([{"role": "tool", "tool_call_id": "x", "content": "1"}])
    assert _tool(unknown)["tool_name"] == "" and _tool(unknown)["tool_call_id"] == "x"


def test_anthropic_tool_result_carries_id_and_name() -> None:
    msgs = from_anthropic(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {}}],
                },
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "sunny"}]},
            ]
        }
    )
    tool = _tool(msgs)
    assert (tool["tool_call_id"], tool["tool_name"], tool["content"]) == ("tu_1", "get_weather", "sunny")


def test_responses_function_call_output_carries_id_and_name() -> None:
    chat = items_to_chat(
        [
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": "fc_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "fc_1", "output": "sunny"},
        ]
    )
    tool = _tool(from_openai(chat))
    assert (tool["tool_call_id"], tool["tool_name"]) == ("fc_1", "get_weather")
