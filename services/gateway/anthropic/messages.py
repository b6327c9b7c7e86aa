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
from services.gateway.http import collect, parse_json
from services.gateway.native.common import DONE_REASONS
from services.gateway.sse import Event, sse_stream

router = APIRouter()
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise bad_request("invalid message content")


def _block_text(content: Any) -> str:
    if content is None:
        return ""
    return "\n".join(b.get("text", "") for b in _blocks(content) if b.get("type") == "text")


def to_ollama_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        out.append({"role": "system", "content": _block_text(system)})
    names: dict[str, str] = {}
    for m in body.get("messages") or []:
        role = m.get("role")
        if role not in ("user", "assistant"):
            raise bad_request(f"invalid role: {role}")
        msg: dict[str, Any] = {"role": role, "content": ""}
        texts: list[str] = []
        for b in _blocks(m.get("content")):
            kind = b.get("type")
            if kind == "text":
                texts.append(b.get("text", ""))
            elif kind == "image":
                src = b.get("source") or {}
                if src.get("type") != "base64":
                    raise bad_request("image URLs are not currently supported, please use base64 encoded data instead")
                msg.setdefault("images", []).append(src.get("data", ""))
            elif kind == "thinking":
                msg["thinking"] = b.get("thinking", "")
            elif kind == "tool_use":
                names[b.get("id", "")] = b.get("name", "")
                calls = msg.setdefault("tool_calls", [])
                fn = {"index": len(calls), "name": b.get("name", ""), "arguments": b.get("input") or {}}
                calls.append({"id": b.get("id", ""), "function": fn})
            elif kind == "tool_result":
                tid = b.get("tool_use_id", "")
                out.append(
                    {
                        "role": "tool",
                        "content": _block_text(b.get("content")),
                        "tool_call_id": tid,
                        "tool_name": names.get(tid, ""),
                    }
                )
            elif kind == "redacted_thinking":
                continue
            else:
                raise bad_request(f"unsupported content block type: {kind}")
        msg["content"] = "\n".join(texts)
        if (
            msg["content"]
            or msg.get("tool_calls")
            or msg.get("images")
            or not any(b.get("type") == "tool_result" for b in _blocks(m.get("content")))
        ):
            out.append(msg)
    return out


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                "name": t.get("name", ""),
                "description": t.get("description", ""),
                "parameters": t.get("input_schema") or {"type": "object", "properties": {}},
            },
        }
        for t in tools
    ]


def _options(body: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {"num_predict": body["max_tokens"]}
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
        if body.get(src) is not None:
            opts[dst] = body[src]
    if body.get("stop_sequences"):
        opts["stop"] = body["stop_sequences"]
    return opts


def _think(body: dict[str, Any]) -> Any:
    thinking = body.get("thinking") or {}
    effort = (body.get("output_config") or {}).get("effort")
    if thinking.get("type") == "enabled":
        return {"xhigh": "high"}.get(effort, effort) if effort else True
    if thinking.get("type") == "disabled":
        return False
    return None


def _budget(body: dict[str, Any]) -> int:
    """thinking.budget_tokens, enforced: the runner closes the thinking block after that many tokens."""
    thinking = body.get("thinking") or {}
    if thinking.get("type") != "enabled" or thinking.get("budget_tokens") is None:
        return 0
    budget = thinking["budget_tokens"]
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise bad_request("thinking.budget_tokens must be a positive integer")
    return budget


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
    body = await parse_json(request)
    if not body.get("model"):
        raise bad_request("model is required")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] <= 0:
        raise bad_request("max_tokens is required and must be positive")
    if not body.get("messages"):
        raise bad_request("messages is required")
    backends = request.app.state.backends
    job = await pipeline.prepare_chat(
        backends,
        body["model"],
        to_ollama_messages(body),
        tools=_tools(body.get("tools")),
        request_options=_options(body),
        think=pipeline.parse_think(_think(body)),
        relax_think=True,
        coerce_level=True,
        tool_choice=toolchoice.from_anthropic(body.get("tool_choice")),
        think_budget=_budget(body),
    )
    mid, model = "msg_" + secrets.token_hex(12), body["model"]
    stream = pipeline.run(backends, job)

    if body.get("stream"):
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
