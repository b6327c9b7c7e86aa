"""POST /v1/chat/completions."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.gateway import pipeline, toolchoice
from services.gateway.errors import bad_request, openai_body
from services.gateway.http import collect, json_response, parse_json
from services.gateway.native.common import keep_alive
from services.gateway.openai import common
from services.gateway.sse import Event, sse_stream

router = APIRouter()


def _text(content: Any) -> tuple[str, list[str]]:
    """Message content as text plus base64 images (data URIs only, like Ollama)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise bad_request("invalid message content")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url", "") if isinstance(url, dict) else str(url or "")
            if url.startswith(("http://", "https://")):
                raise bad_request("image URLs are not currently supported, please use base64 encoded data instead")
            if not url.startswith("data:") or "," not in url:
                raise bad_request("invalid image input")
            images.append(url.split(",", 1)[1])
        else:
            raise bad_request(f"invalid message part type: {kind}")
    return "\n".join(texts), images


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise bad_request("tool call arguments must be a JSON object string") from exc
    if not isinstance(parsed, dict):
        raise bad_request("tool call arguments must be a JSON object string")
    return parsed


def to_ollama_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("[] is too short - 'messages'")
    names_by_id: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        if not isinstance(m, dict):
            raise bad_request("invalid message")
        role = str(m.get("role", "")).lower()
        role = "system" if role == "developer" else role
        text, images = _text(m.get("content"))
        msg: dict[str, Any] = {"role": role, "content": text}
        if images:
            msg["images"] = images
        if m.get("reasoning") or m.get("reasoning_content"):
            msg["thinking"] = m.get("reasoning") or m.get("reasoning_content")
        if m.get("tool_calls"):
            calls = []
            for i, tc in enumerate(m["tool_calls"]):
                fn = tc.get("function") or {}
                names_by_id[tc.get("id", "")] = fn.get("name", "")
                calls.append(
                    {
                        "id": tc.get("id", ""),
                        "function": {
                            "index": i,
                            "name": fn.get("name", ""),
                            "arguments": _arguments(fn.get("arguments")),
                        },
                    }
                )
            msg["tool_calls"] = calls
        if role == "tool":
            call_id = m.get("tool_call_id") or ""
            msg["tool_call_id"] = call_id
            msg["tool_name"] = m.get("name") or names_by_id.get(call_id, "")
        out.append(msg)
    return out


def response_format(rf: Any) -> Any:
    if not rf:
        return None
    kind = rf.get("type") if isinstance(rf, dict) else None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise bad_request("response_format.json_schema.schema must be an object")
        return schema
    if kind == "text":
        return None
    raise bad_request(f"invalid response_format type: {kind}")


def openai_tool_calls(calls: list[dict[str, Any]], stream: bool) -> list[dict[str, Any]]:
    out = []
    for tc in calls:
        fn = tc["function"]
        item: dict[str, Any] = {
            "id": tc["id"],
            "type": "function",
            "function": {"name": fn["name"], "arguments": json.dumps(fn["arguments"], ensure_ascii=False)},
        }
        item["index"] = fn["index"]
        out.append(item)
    return out


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await parse_json(request)
    if not body.get("model"):
        raise bad_request("model is required", "model_required")
    n = common.choice_count(body)
    effort = body.get("reasoning_effort") or (body.get("reasoning") or {}).get("effort")
    think = pipeline.parse_think(common.think_from_effort(effort))
    top = body.get("top_logprobs") or 0
    backends = request.app.state.backends
    messages = to_ollama_messages(body.get("messages"))
    job = await pipeline.prepare_chat(
        backends,
        body["model"],
        messages,
        tools=body.get("tools") or None,
        fmt=response_format(body.get("response_format")),
        request_options=common.sampling_options(body),
        think=think,
        keep_alive=keep_alive(body.get("keep_alive")),
        logprobs=bool(body.get("logprobs")) or top > 0,
        top_logprobs=top,
        coerce_level=True,
        tool_choice=toolchoice.from_openai(body.get("tool_choice")),
        grammar=body.get("grammar") or "",
    )
    cid, created, model = common.new_id("chatcmpl"), int(time.time()), body["model"]
    base = {"id": cid, "created": created, "model": model, "system_fingerprint": "fp_ollama"}
    if body.get("_debug_render_only"):
        info = pipeline.debug_info(job.prompt, messages)
        empty = {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop", "logprobs": None}
        return json_response({**base, "object": "chat.completion", "choices": [empty], "_debug_info": info})
    events = pipeline.run_choices(backends, job, n)

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await sse_stream(_stream(events, base, include_usage), openai_body)

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        async with contextlib.aclosing(events):
            async for i, ev in events:
                yield {"i": i, "ev": ev}

    def choice(i: int, evs: list[pipeline.Event]) -> dict[str, Any]:
        calls = [tc for e in evs for tc in e.tool_calls]
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(e.content for e in evs)}
        reasoning = "".join(e.thinking for e in evs)
        if reasoning:
            msg["reasoning"] = reasoning
        if calls:
            msg["tool_calls"] = openai_tool_calls(calls, False)
        lps = [lp for e in evs for lp in e.logprobs]
        return {
            "index": i,
            "message": msg,
            "finish_reason": common.finish_reason(evs[-1], bool(calls)),
            "logprobs": {"content": common.openai_logprobs(lps)} if lps else None,
        }

    def merge(items: list[dict[str, Any]]) -> dict[str, Any]:
        by_choice: dict[int, list[pipeline.Event]] = {}
        for item in items:
            by_choice.setdefault(item["i"], []).append(item["ev"])
        choices = [choice(i, evs) for i, evs in sorted(by_choice.items())]
        usage = common.total_usage([evs[-1] for evs in by_choice.values()])
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage}

    return await collect(request, chunks(), merge, error_body=openai_body)


async def _stream(
    events: AsyncGenerator[tuple[int, pipeline.Event], None], base: dict[str, Any], include_usage: bool
) -> AsyncGenerator[Event, None]:
    started: set[int] = set()
    had_tools: set[int] = set()
    last: dict[int, pipeline.Event] = {}

    def chunk(i: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> Event:
        if i not in started:
            delta = {"role": "assistant", **delta}
            started.add(i)
        choice: dict[str, Any] = {"index": i, "delta": delta, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": common.openai_logprobs(logprobs)}
        return None, {**base, "object": "chat.completion.chunk", "choices": [choice]}

    def finish(i: int) -> Event:
        if i not in started:
            return chunk(i, {"content": ""}, common.finish_reason(last[i], i in had_tools))
        return chunk(i, {}, common.finish_reason(last[i], i in had_tools))

    async with contextlib.aclosing(events):
        async for i, ev in events:
            last[i] = ev
            pieces: list[dict[str, Any]] = []
            if ev.thinking:
                pieces.append({"content": "", "reasoning": ev.thinking})
            if ev.content or ev.logprobs:
                pieces.append({"content": ev.content})
            if ev.tool_calls:
                had_tools.add(i)
                pieces.append({"tool_calls": openai_tool_calls(ev.tool_calls, True)})
            for k, delta in enumerate(pieces):
                yield chunk(i, delta, logprobs=ev.logprobs if k == len(pieces) - 1 else None)
            if ev.done:
                yield finish(i)
        if not last:
            return
        for i, ev in sorted(last.items()):
            if not ev.done:
                yield finish(i)
        if include_usage:
            usage = common.total_usage(list(last.values()))
            yield None, {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        yield None, "[DONE]"
