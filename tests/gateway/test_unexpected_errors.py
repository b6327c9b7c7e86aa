"""A bug in a handler, over real HTTP: the gateway app served by uvicorn on loopback, with
one route that raises. The client gets a 500 in its surface's shape, and the keep-alive
connection survives for the next request."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from services.gateway.app import create_app
from services.gateway.backends import Backends


@pytest.fixture
def url() -> Iterator[str]:
    app = create_app(Backends("unix:/nonexistent/registry.sock", "unix:/nonexistent/scheduler.sock"))

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/api/boom", boom, methods=["POST"])
    app.add_api_route("/v1/boom", boom, methods=["POST"])
    app.add_api_route("/v1/messages/boom", boom, methods=["POST"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_bug_is_a_shaped_500_and_the_connection_lives_on(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):  # the same connection each time: it must not have been closed
            r = client.post("/api/boom")
            assert r.status_code == 500
            assert r.json() == {"error": "internal error: RuntimeError", "code": "internal"}
            assert client.get("/").text == "Ollama is running"
        assert client.post("/v1/boom").json()["error"]["message"] == "internal error: RuntimeError"
        assert client.post("/v1/messages/boom").json()["type"] == "error"
