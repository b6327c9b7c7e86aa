"""POST /v1/messages (Anthropic Messages API)."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway import pipeline, toolchoice
from services.gateway.errors import anthropic_body, bad_request
from services.gateway.http import JsonModel, collect, parse_body
from services.gateway.native.common import DONE_REASONS
from services.gateway.sse import Event, sse_stream

router = APIRouter()
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


class ImageSource(JsonModel):
    type: str = ""
    media_type: str = ""
    data: str = ""


class Block(JsonModel):
    """A content block; which fields count depends on `type`."""

    type: str = ""
    text: str = ""  # text
    thinking: str = ""  # thinking
    source: ImageSource | None = None  # image
    id: str = ""  # tool_use
    name: str = ""  # tool_use
    input: dict[str, Any] | None = None  # tool_use
    tool_use_id: str = ""  # tool_result
    content: str | list[Block] | None = None  # tool_result


class Message(JsonModel):
    role: str = ""
    content: str | list[Block] = ""


class Tool(JsonModel):
    type: str | None = None
    name: str = ""
    description: str = ""
    input_schema: dict[str, Any] | None = None


class Thinking(JsonModel):
    type: str = ""
    budget_tokens: int | None = None


class OutputConfig(JsonModel):
    effort: str | None = None


class MessagesRequest(JsonModel):
    """/v1/messages and, without max_tokens, /v1/messages/count_tokens."""

    model: str = ""
    messages: list[Message] | None = None
    system: str | list[Block] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    tools: list[Tool] | None = None
    tool_choice: dict[str, Any] | None = None  # checked by toolchoice.from_anthropic
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None


def _blocks(content: str | list[Block] | None) -> list[Block]:
    if content is None:
        return []
    return [Block(type="text", text=content)] if isinstance(content, str) else content


def _block_text(content: str | list[Block] | None) -> str:
    return "\n".join(b.text for b in _blocks(content) if b.type == "text")


def to_ollama_messages(req: MessagesRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": _block_text(req.system)})
    names: dict[str, str] = {}
    for m in req.messages or []:
        if m.role not in ("user", "assistant"):
            raise bad_request(f"invalid role: {m.role}")
        msg: dict[str, Any] = {"role": m.role, "content": ""}
        texts: list[str] = []
        blocks = _blocks(m.content)
        for b in blocks:
            if b.type == "text":
                texts.append(b.text)
            elif b.type == "image":
                if b.source is None or b.source.type != "base64":
                    raise bad_request("image URLs are not currently supported, please use base64 encoded data instead")
                msg.setdefault("images", []).append(b.source.data)
            elif b.type == "thinking":
                msg["thinking"] = b.thinking
            elif b.type == "tool_use":
                names[b.id] = b.name
                calls = msg.setdefault("tool_calls", [])
                fn = {"index": len(calls), "name": b.name, "arguments": b.input or {}}
                calls.append({"id": b.id, "function": fn})
            elif b.type == "tool_result":
                out.append(
                    {
                        "role": "tool",
                        "content": _block_text(b.content),
                        "tool_call_id": b.tool_use_id,
                        "tool_name": names.get(b.tool_use_id, ""),
                    }
                )
            elif b.type == "redacted_thinking":
                continue
            else:
                raise bad_request(f"unsupported content block type: {b.type}")
        msg["content"] = "\n".join(texts)
        if (
            msg["content"]
            or msg.get("tool_calls")
            or msg.get("images")
            or not any(b.type == "tool_result" for b in blocks)
        ):
            out.append(msg)
    return out


def tools(req: MessagesRequest) -> list[dict[str, Any]] | None:
    if not req.tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": t.input_schema or {"type": "object", "properties": {}},
            },
        }
        for t in req.tools
    ]


def _options(req: MessagesRequest) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_predict": req.max_tokens}
    for key in ("temperature", "top_p", "top_k"):
        if getattr(req, key) is not None:
            opts[key] = getattr(req, key)
    if req.stop_sequences:
        opts["stop"] = req.stop_sequences
    return opts


def think(req: MessagesRequest) -> Any:
    effort = req.output_config.effort if req.output_config else None
    kind = req.thinking.type if req.thinking else ""
    if kind == "enabled":
        return {"xhigh": "high"}.get(effort, effort) if effort else True
    if kind == "disabled":
        return False
    return None


def _budget(req: MessagesRequest) -> int:
    """thinking.budget_tokens, enforced: the runner closes the thinking block after that many tokens."""
    if req.thinking is None or req.thinking.type != "enabled" or req.thinking.budget_tokens is None:
        return 0
    if req.thinking.budget_tokens < 1:
        raise bad_request("thinking.budget_tokens must be a positive integer")
    return req.thinking.budget_tokens


def _stop_reason(ev: pipeline.Event, had_tools: bool) -> str:
    if had_tools:
        return "tool_use"
    reason = DONE_REASONS.get(ev.final.done_reason, "stop") if ev.final is not None else "stop"
    return STOP_REASONS.get(reason, "stop_sequence")


def _usage(ev: pipeline.Event | None) -> dict[str, int]:
    s = ev.final.stats if ev is not None and ev.final is not None else None
    return {"input_tokens": s.prompt_eval_count if s else 0, "output_tokens": s.eval_count if s else 0}


@router.post("/v1/messages")
async def messages(request: Request) -> Response:
    req = await parse_body(request, MessagesRequest)
    if not req.model:
        raise bad_request("model is required")
    if req.max_tokens is None or req.max_tokens <= 0:
        raise bad_request("max_tokens is required and must be positive")
    if not req.messages:
        raise bad_request("messages is required")
    backends = request.app.state.backends
    job = await pipeline.prepare_chat(
        backends,
        req.model,
        to_ollama_messages(req),
        tools=tools(req),
        request_options=_options(req),
        think=pipeline.parse_think(think(req)),
        relax_think=True,
        coerce_level=True,
        tool_choice=toolchoice.from_anthropic(req.tool_choice),
        think_budget=_budget(req),
    )
    mid, model = "msg_" + secrets.token_hex(12), req.model
    stream = pipeline.run(backends, job)

    if req.stream:
        return await sse_stream(_stream(stream, mid, model), anthropic_body, "error")

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        try:
            async for ev in stream:
                yield {"ev": ev}
        finally:
            await stream.aclose()

    def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
        evs: list[pipeline.Event] = [i["ev"] for i in items]
        content: list[dict[str, Any]] = []
        thinking = "".join(e.thinking for e in evs)
        if thinking:
            content.append({"type": "thinking", "thinking": thinking, "signature": ""})
        text = "".join(e.content for e in evs)
        if text:
            content.append({"type": "text", "text": text})
        calls = [tc for e in evs for tc in e.tool_calls]
        for tc in calls:
            fn = tc["function"]
            content.append(
                {"type": "tool_use", "id": "toolu_" + tc["id"][5:], "name": fn["name"], "input": fn["arguments"]}
            )
        return {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": _stop_reason(evs[-1], bool(calls)),
            "stop_sequence": None,
            "usage": _usage(evs[-1]),
        }

    return await collect(request, chunks(), merge, error_body=anthropic_body)


async def _stream(events: AsyncGenerator[pipeline.Event, None], mid: str, model: str) -> AsyncGenerator[Event, None]:
    index = -1
    open_kind = ""
    had_tools = False
    last: pipeline.Event | None = None

    def start(kind: str, block: dict[str, Any]) -> list[Event]:
        nonlocal index, open_kind
        out = stop()
        index += 1
        open_kind = kind
        out.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": block}))
        return out

    def stop() -> list[Event]:
        nonlocal open_kind
        if not open_kind:
            return []
        out: list[Event] = []
        if open_kind == "thinking":
            delta = {"type": "signature_delta", "signature": ""}
            out.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        open_kind = ""
        return out

    def delta(d: dict[str, Any]) -> Event:
        return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}

    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    try:
        async for ev in events:
            if last is None:
                yield "message_start", {"type": "message_start", "message": message}
            last = ev
            if ev.thinking:
                if open_kind != "thinking":
                    for e in start("thinking", {"type": "thinking", "thinking": "", "signature": ""}):
                        yield e
                yield delta({"type": "thinking_delta", "thinking": ev.thinking})
            if ev.content:
                if open_kind != "text":
                    for e in start("text", {"type": "text", "text": ""}):
                        yield e
                yield delta({"type": "text_delta", "text": ev.content})
            for tc in ev.tool_calls:
                had_tools = True
                fn = tc["function"]
                block = {"type": "tool_use", "id": "toolu_" + tc["id"][5:], "name": fn["name"], "input": {}}
                for e in start("tool_use", block):
                    yield e
                yield delta({"type": "input_json_delta", "partial_json": json.dumps(fn["arguments"])})
        if last is None:
            return
        for e in stop():
            yield e
        yield (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(last, had_tools), "stop_sequence": None},
                "usage": _usage(last),
            },
        )
        yield "message_stop", {"type": "message_stop"}
    finally:
        await events.aclose()
