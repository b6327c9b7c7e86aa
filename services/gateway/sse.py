"""Server-sent events for the OpenAI and Anthropic surfaces.

An error before the first event gets its real status and the surface's error body;
after it, the error goes out as an SSE error event so clients see it (Ollama drops it).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from services.gateway.errors import HTTPError

# (event name or None, payload); a str payload is sent verbatim (e.g. "[DONE]")
Event = tuple[str | None, Any]


def frame(event: str | None, data: Any) -> bytes:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {body}\n\n".encode()


async def sse_stream(
    events: AsyncGenerator[Event, None],
    error_body: Callable[[HTTPError], dict[str, Any]],
    error_event: str | None = None,
) -> Response:
    try:
        first = await anext(events)
    except StopAsyncIteration:
        return Response(b"", media_type="text/event-stream")
    except HTTPError as err:
        return JSONResponse(error_body(err), status_code=err.status)

    async def body() -> AsyncIterator[bytes]:
        try:
            yield frame(*first)
            async for ev in events:
                yield frame(*ev)
        except HTTPError as err:
            yield frame(error_event, error_body(err))
        finally:
            await events.aclose()

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
