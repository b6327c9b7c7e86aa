"""Graceful drain: SIGTERM to the gateway refuses new requests, lets the running stream finish
(within CORRAL_DRAIN_TIMEOUT), then the gateway exits; a stream longer than that is cut."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.stack import Stack, create_model, start_stack, stop_stack

pytestmark = pytest.mark.e2e

MODEL = "gemma3"
DRAIN = 40.0  # long enough for a 20-token stream on an oversubscribed 2-core machine
# One context size for every request: other options would reload the model mid-test.
SHORT = {"temperature": 0, "num_predict": 20, "num_ctx": 8192}
LONG = {**SHORT, "num_predict": 100000}  # 8192 tokens: far longer than DRAIN on any CPU


@pytest.fixture(scope="module")
def dstack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    env = {"CORRAL_DRAIN_TIMEOUT": f"{DRAIN:.0f}s", "CORRAL_KEEP_ALIVE": "-1"}
    s = start_stack(tmp_path_factory.mktemp("drain"), **env)
    try:
        assert create_model(s.url, MODEL, gemma_path)[-1] == {"status": "success"}
        warm = {"model": MODEL, "prompt": "Hi", "stream": False, "options": {**SHORT, "num_predict": 1}}
        assert httpx.post(s.url + "/api/generate", json=warm, timeout=300).status_code == 200
        yield s
    finally:
        stop_stack(s)


def _stream(stack: Stack, body: dict[str, Any], lines: list[dict[str, Any]], first: threading.Event) -> None:
    try:
        with httpx.stream("POST", stack.url + "/api/generate", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line:
                    lines.append(json.loads(line))
                    first.set()
    except httpx.HTTPError as err:
        lines.append({"transport_error": repr(err)})
    first.set()


def _refused(stack: Stack) -> bool:
    try:
        r = httpx.get(stack.url + "/api/version", timeout=5)
    except httpx.ConnectError:
        return True
    return r.status_code == 503


def _drain(stack: Stack, body: dict[str, Any]) -> tuple[list[dict[str, Any]], float, bool]:
    """Start a stream, SIGTERM the gateway after its first line; returns the stream's lines,
    how long the gateway took to exit, and whether new requests were refused meanwhile."""
    gateway = stack.child("gateway")
    assert gateway is not None
    lines: list[dict[str, Any]] = []
    first = threading.Event()
    t = threading.Thread(target=_stream, args=(stack, body, lines, first), daemon=True)
    t.start()
    assert first.wait(60)
    assert "transport_error" not in lines[0], lines
    sent = time.monotonic()
    gateway.send_signal(signal.SIGTERM)
    refused = False
    deadline = sent + DRAIN / 2
    while not refused and time.monotonic() < deadline and gateway.is_running():
        refused = _refused(stack)
        time.sleep(0.05)
    try:
        gateway.wait(DRAIN + 10)
    except psutil.TimeoutExpired:
        pytest.fail("the gateway did not exit after its drain timeout")
    took = time.monotonic() - sent
    t.join(30)
    assert not t.is_alive(), "the client hung"
    return lines, took, refused


def _back(stack: Stack, old_pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        child = stack.child("gateway")
        if child is not None and child.pid != old_pid and not _refused(stack):
            return
        time.sleep(0.2)
    pytest.fail("the gateway did not come back")


def _gateway(stack: Stack) -> psutil.Process:
    """The live gateway, once it answers (a previous test may have just drained one)."""
    _back(stack, -1)
    child = stack.child("gateway")
    assert child is not None
    return child


def test_sigterm_lets_the_running_stream_finish(dstack: Stack) -> None:
    old = _gateway(dstack)
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "options": SHORT}
    lines, took, refused = _drain(dstack, body)
    assert refused, "a new request was accepted while draining"
    assert lines[-1].get("done") is True, lines[-2:]
    assert lines[-1]["eval_count"] == SHORT["num_predict"]
    assert took < DRAIN, took  # it exited once the stream was done, not at the timeout
    _back(dstack, old.pid)


def test_a_stream_longer_than_the_drain_timeout_is_cut(dstack: Stack) -> None:
    old = _gateway(dstack)
    body = {
        "model": MODEL,
        "prompt": "Count: 1, 2, 3,",
        "options": LONG,
    }
    lines, took, refused = _drain(dstack, body)
    assert refused
    assert not lines[-1].get("done"), "the stream ended by itself before the drain timeout"
    assert DRAIN - 1 < took < DRAIN + 5, took
    _back(dstack, old.pid)


def test_corral_serve_drains_the_gateway_before_stopping_the_rest(dstack: Stack) -> None:
    """SIGTERM to `corral serve` stops the gateway first and waits for it, so the runner and
    scheduler a running stream needs are still there. Last here: the stack is gone after."""
    _gateway(dstack)
    lines: list[dict[str, Any]] = []
    first = threading.Event()
    body = {"model": MODEL, "prompt": "Count: 1, 2, 3,", "options": SHORT}
    t = threading.Thread(target=_stream, args=(dstack, body, lines, first), daemon=True)
    t.start()
    assert first.wait(60)
    dstack.proc.send_signal(signal.SIGTERM)
    dstack.proc.wait(DRAIN + 20)
    t.join(30)
    assert lines[-1].get("done") is True, lines[-2:]
    assert lines[-1]["eval_count"] == SHORT["num_predict"]
