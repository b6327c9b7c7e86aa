"""POST/GET/DELETE /v1/responses: OpenAI's Responses API over the chat pipeline.

A request becomes chat messages (`instructions` first, then the stored conversation of
`previous_response_id`, then `input`), runs through pipeline.prepare_chat/run like
/v1/chat/completions, and the events are shaped into output items (reasoning, message,
function_call). One `Builder` makes both the SSE event sequence the `openai` SDK's stream
accumulator expects and the final Response object, so the two cannot drift apart.
Responses with `store` (OpenAI's default: true) are kept by the registry, bounded and expiring.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral.v1 import registry_pb2
from services.gateway import pipeline, toolchoice
from services.gateway.backends import Backends
from services.gateway.errors import HTTPError, bad_request, from_rpc, openai_body
from services.gateway.http import collect, json_response, parse_json, validated
from services.gateway.native.common import keep_alive
from services.gateway.openai import common
from services.gateway.openai.chat import ChatMessage, to_ollama_messages
from services.gateway.sse import Event, sse_stream

router = APIRouter()

Item = dict[str, Any]


def not_found(rid: str) -> HTTPError:
    return HTTPError(404, f"Response with id '{rid}' not found.", "not_found")


# Request → chat

_TYPES: dict[str, tuple[type, ...]] = {
    "instructions": (str,),
    "previous_response_id": (str,),
    "text": (dict,),
    "reasoning": (dict,),
    "metadata": (dict,),
    "tools": (list,),
    "store": (bool,),
    "stream": (bool,),
    "parallel_tool_calls": (bool,),
    "temperature": (int, float),
    "top_p": (int, float),
    "max_output_tokens": (int,),
    "seed": (int,),
    "keep_alive": (int, float, str),
}


def check(body: dict[str, Any]) -> None:
    """Field types, checked before anything reads them (a wrong type is a 400, never a 500)."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise bad_request("model is required", "model_required")
    for key, kinds in _TYPES.items():
        value = body.get(key)
        if value is not None and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
            raise bad_request(f"invalid type for '{key}'")
    fmt = (body.get("text") or {}).get("format")
    if fmt is not None and not isinstance(fmt, dict):
        raise bad_request("invalid type for 'text.format'")
    effort = (body.get("reasoning") or {}).get("effort")
    if effort is not None and not isinstance(effort, str):
        raise bad_request("invalid type for 'reasoning.effort'")
    if body.get("max_output_tokens") is not None and body["max_output_tokens"] < 1:
        raise bad_request("max_output_tokens must be at least 1")


def _content(content: Any) -> Any:
    """Responses content parts to chat content parts (text and data-URI images)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise bad_request("invalid message content")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            parts.append({"type": "text", "text": str(part.get("text") or part.get("refusal") or "")})
        elif kind == "input_image":
            parts.append({"type": "image_url", "image_url": {"url": str(part.get("image_url") or "")}})
        else:
            raise bad_request(f"invalid input content part type: {kind}")
    return parts


def items_to_chat(items: list[Item]) -> list[dict[str, Any]]:
    """Responses input items to OpenAI chat messages: function calls join the assistant turn
    before them, reasoning becomes the next assistant turn's reasoning."""
    out: list[dict[str, Any]] = []
    reasoning = ""
    for item in items:
        if not isinstance(item, dict):
            raise bad_request("invalid input item")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"invalid message role: {item.get('role')}")
            msg: dict[str, Any] = {"role": item["role"], "content": _content(item.get("content"))}
            if msg["role"] == "assistant" and reasoning:
                msg["reasoning"], reasoning = reasoning, ""
            out.append(msg)
        elif kind == "function_call":
            if not isinstance(item.get("arguments", ""), str) or not isinstance(item.get("name", ""), str):
                raise bad_request("function_call needs a string name and arguments")
            call = {
                "id": str(item.get("call_id") or item.get("id") or ""),
                "type": "function",
                "function": {"name": str(item.get("name") or ""), "arguments": item.get("arguments") or "{}"},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            if reasoning:
                out[-1]["reasoning"], reasoning = reasoning, ""
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
            out.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""), "content": text})
        elif kind == "reasoning":
            texts = [str(s.get("text", "")) for s in item.get("summary") or [] if isinstance(s, dict)]
            texts += [str(c.get("text", "")) for c in item.get("content") or [] if isinstance(c, dict)]
            reasoning += "".join(texts)
        else:
            raise bad_request(f"unsupported input item type: {kind}")
    return out


def input_items(raw: Any) -> list[Item]:
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    if isinstance(raw, list) and raw:
        return raw
    raise bad_request("input must be a string or a non-empty list of items")


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    if not isinstance(tools, list):
        raise bad_request("tools must be a list")
    out = []
    for t in tools:
        if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
            kind = t.get("type") if isinstance(t, dict) else None
            raise bad_request(f"unsupported tool type: {kind} (only function tools are supported)")
        if not isinstance(t.get("parameters") or {}, dict):
            raise bad_request("a function tool's parameters must be an object")
        fn = {k: t[k] for k in ("name", "description", "parameters") if t.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def text_format(text: Any) -> Any:
    fmt = (text or {}).get("format") if isinstance(text, dict) else None
    if not fmt or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise bad_request("text.format.schema must be an object")
        return fmt["schema"]
    raise bad_request(f"invalid text.format type: {fmt.get('type')}")


async def prepare(backends: Backends, body: dict[str, Any], items: list[Item]) -> pipeline.Job:
    """The single place a Responses request becomes a pipeline job."""
    messages = items_to_chat(items)
    if body.get("instructions"):
        messages.insert(0, {"role": "system", "content": str(body["instructions"])})
    effort = (body.get("reasoning") or {}).get("effort")
    fields = common.TextRequest(temperature=body.get("temperature"), top_p=body.get("top_p"), seed=body.get("seed"))
    opts = common.sampling_options(fields)
    if body.get("max_output_tokens") is not None:
        opts["num_predict"] = body["max_output_tokens"]
    return await pipeline.prepare_chat(
        backends,
        body["model"],
        to_ollama_messages([validated(ChatMessage, m) for m in messages]),
        tools=chat_tools(body.get("tools")),
        fmt=text_format(body.get("text")),
        request_options=opts,
        think=pipeline.parse_think(common.think_from_effort(effort)),
        keep_alive=keep_alive(body.get("keep_alive")),
        coerce_level=True,  # reasoning.effort maps onto a level, as on /v1/chat/completions
        tool_choice=toolchoice.from_openai(body.get("tool_choice")),  # enforced by grammar in the runner
    )


# Events → output items and SSE


class Builder:
    """Turns pipeline events into Responses SSE events while collecting the output items."""

    def __init__(self, response: dict[str, Any]) -> None:
        self.response = response
        self.output: list[Item] = response["output"]
        self.seq = 0
        self.open: Item | None = None
        self.text = ""

    def event(self, kind: str, **fields: Any) -> Event:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return kind, data

    def _add(self, item: Item) -> list[Event]:
        self.output.append(item)
        return [self.event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))]

    def _where(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1}

    def close(self) -> list[Event]:
        if self.open is None:
            return []
        item, where, self.open = self.open, self._where(), None
        evs: list[Event] = []
        if item["type"] == "reasoning":
            part: dict[str, Any] = {"type": "summary_text", "text": self.text}
            item["summary"] = [part]
            evs.append(self.event("response.reasoning_summary_text.done", **where, summary_index=0, text=self.text))
            evs.append(self.event("response.reasoning_summary_part.done", **where, summary_index=0, part=part))
        else:
            part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
            item["content"], item["status"] = [part], "completed"
            evs.append(self.event("response.output_text.done", **where, content_index=0, text=self.text, logprobs=[]))
            evs.append(self.event("response.content_part.done", **where, content_index=0, part=part))
        evs.append(self.event("response.output_item.done", output_index=where["output_index"], item=item))
        return evs

    def _open(self, kind: str) -> list[Event]:
        if self.open is not None and self.open["type"] == kind:
            return []
        evs = self.close()
        self.text = ""
        if kind == "reasoning":
            self.open = {"id": common.new_id("rs"), "type": "reasoning", "summary": []}
            evs += self._add(self.open)
            part: dict[str, Any] = {"type": "summary_text", "text": ""}
            evs.append(self.event("response.reasoning_summary_part.added", **self._where(), summary_index=0, part=part))
        else:
            self.open = {"id": common.new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant"}
            self.open["content"] = []
            evs += self._add(self.open)
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            evs.append(self.event("response.content_part.added", **self._where(), content_index=0, part=part))
        return evs

    def add(self, ev: pipeline.Event) -> list[Event]:
        evs: list[Event] = []
        if ev.thinking:
            evs += self._open("reasoning")
            self.text += ev.thinking
            evs.append(
                self.event("response.reasoning_summary_text.delta", **self._where(), summary_index=0, delta=ev.thinking)
            )
        if ev.content and (self.open is not None or ev.content.strip()):
            evs += self._open("message")
            self.text += ev.content
            evs.append(
                self.event(
                    "response.output_text.delta", **self._where(), content_index=0, delta=ev.content, logprobs=[]
                )
            )
        for tc in ev.tool_calls:
            evs += self.close()
            fn = tc["function"]
            args = json.dumps(fn["arguments"], ensure_ascii=False)
            item = {"id": common.new_id("fc"), "type": "function_call", "status": "in_progress"}
            item |= {"call_id": tc["id"], "name": fn["name"], "arguments": ""}
            evs += self._add(item)
            where = {"item_id": item["id"], "output_index": len(self.output) - 1}
            evs.append(self.event("response.function_call_arguments.delta", **where, delta=args))
            evs.append(self.event("response.function_call_arguments.done", **where, name=fn["name"], arguments=args))
            item |= {"arguments": args, "status": "completed"}
            evs.append(self.event("response.output_item.done", output_index=where["output_index"], item=item))
        return evs

    def finish(self, last: pipeline.Event) -> None:
        r = self.response
        s = last.final.stats if last.final is not None else None
        inp, out = (s.prompt_eval_count, s.eval_count) if s else (0, 0)
        r["usage"] = {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out,
        }
        if common.finish_reason(last, False) == "length":
            r["status"], r["incomplete_details"] = "incomplete", {"reason": "max_output_tokens"}
        else:
            r["status"] = "completed"
        r["completed_at"] = int(time.time())


def new_response(body: dict[str, Any]) -> dict[str, Any]:
    fmt = (body.get("text") or {}).get("format") or {"type": "text"}
    return {
        "id": common.new_id("resp").replace("-", "_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": body["model"],
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "store": body.get("store", True) is not False,
        "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
        "text": {"format": fmt},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
        "truncation": "disabled",
        "usage": None,
        "user": None,
    }


def response_text(response: dict[str, Any]) -> None:
    """The `output_text` convenience the SDKs compute (set for raw-HTTP clients too)."""
    response["output_text"] = "".join(
        c["text"] for i in response["output"] if i["type"] == "message" for c in i["content"]
    )


async def _events(
    backends: Backends, job_events: AsyncGenerator[pipeline.Event, None], b: Builder, items: list[Item]
) -> AsyncGenerator[Event, None]:
    try:
        # The first model event comes before response.created, so that a failure to load
        # is an HTTP error with its status rather than an error event in a 200 stream.
        ev = await anext(job_events, None)
        yield b.event("response.created", response=dict(b.response, output=[]))
        yield b.event("response.in_progress", response=dict(b.response, output=[]))
        last: pipeline.Event | None = None
        while ev is not None:
            last = ev
            for out in b.add(ev):
                yield out
            ev = await anext(job_events, None)
        for out in b.close():
            yield out
        if last is None:
            raise HTTPError(500, "no response from the model", "empty_response")
        b.finish(last)
        response_text(b.response)
        if b.response["store"]:
            await _store(backends, b.response, items)
        kind = "response.completed" if b.response["status"] == "completed" else "response.incomplete"
        yield b.event(kind, response=b.response)
    finally:
        await job_events.aclose()


async def _store(backends: Backends, response: dict[str, Any], items: list[Item]) -> None:
    req = registry_pb2.PutResponseRequest(
        id=response["id"], response_json=json.dumps(response, ensure_ascii=False), input_json=json.dumps(items)
    )
    try:
        await backends.registry.PutResponse(req, timeout=30)
    except grpc.RpcError as err:
        raise from_rpc(err) from err


async def _load(backends: Backends, rid: str) -> registry_pb2.GetResponseResponse:
    try:
        got = await backends.registry.GetResponse(registry_pb2.GetResponseRequest(id=rid), timeout=30)
    except grpc.RpcError as err:
        raise from_rpc(err) from err
    if not got.found:
        raise not_found(rid)
    return got


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    body = await parse_json(request)
    check(body)
    backends = request.app.state.backends
    items = input_items(body.get("input"))
    if body.get("previous_response_id"):
        prev = await _load(backends, str(body["previous_response_id"]))
        prior = json.loads(prev.input_json) + json.loads(prev.response_json)["output"]
        items = prior + items
    job = await prepare(backends, body, items)
    b = Builder(new_response(body))
    events = _events(backends, pipeline.run(backends, job), b, items)
    if body.get("stream"):
        return await sse_stream(events, openai_body, "error")

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        async with contextlib.aclosing(events):
            async for _ in events:
                yield {}

    return await collect(request, chunks(), lambda _: b.response, error_body=openai_body)


@router.get("/v1/responses/{rid}")
async def get_response(rid: str, request: Request) -> Response:
    got = await _load(request.app.state.backends, rid)
    return json_response(json.loads(got.response_json))


@router.delete("/v1/responses/{rid}")
async def delete_response(rid: str, request: Request) -> Response:
    try:
        resp = await request.app.state.backends.registry.DeleteResponse(
            registry_pb2.DeleteResponseRequest(id=rid), timeout=30
        )
    except grpc.RpcError as err:
        raise from_rpc(err) from err
    if not resp.deleted:
        raise not_found(rid)
    return json_response({"id": rid, "object": "response.deleted", "deleted": True})
