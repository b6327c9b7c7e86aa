"""SIGKILL each service of a real `corral serve` stack in the middle of real work.

Afterwards the store is consistent (every listed model shows and runs, every manifest's
blobs are whole, nothing half-written is visible), interrupted pulls resume, and clients
got an error line or a 5xx — never a hang: every client call here has a bounded timeout.
The fault matrix and which recovery each test was checked against are in
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.registry.oci import OciRegistry, Proxy
from tests.stack import Stack, create_model, start_stack, stop_stack

pytestmark = pytest.mark.e2e

MODEL = "gemma3"
SHORT = {"temperature": 0, "num_predict": 2, "num_ctx": 256}
LONG = {"temperature": 0, "num_predict": 400, "num_ctx": 1024}
# The longest any client call may take here; a hang fails the test instead of stalling it.
BOUND = 90.0
STORY = {"model": MODEL, "prompt": "Tell a long story.", "options": LONG}


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    """A stack of its own: these tests kill its services."""
    s = start_stack(tmp_path_factory.mktemp("faults"), CORRAL_LEASE_IDLE_TIMEOUT="3s")
    try:
        assert create_model(s.url, MODEL, gemma_path)[-1] == {"status": "success"}
        yield s
    finally:
        stop_stack(s)


# ---- helpers ---------------------------------------------------------------


def kill(stack: Stack, service: str) -> int:
    child = stack.child(service)
    assert child is not None, f"no live {service}"
    child.kill()  # SIGKILL
    return child.pid


def wait_back(stack: Stack, service: str, old_pid: int) -> None:
    """Until the supervisor has restarted `service` and the stack answers again."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        child = stack.child(service)
        if child is not None and child.pid != old_pid:
            try:
                if httpx.get(stack.url + "/api/tags", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    pytest.fail(f"{service} was not restarted:\n{stack.logs()}")


def generate(
    stack: Stack, model: str = MODEL, timeout: float = BOUND, headers: dict[str, str] | None = None, **body: Any
) -> httpx.Response:
    req = {"model": model, "prompt": "Why is the sky blue?", "stream": False, "options": SHORT, **body}
    return httpx.post(stack.url + "/api/generate", json=req, timeout=timeout, headers=headers)


def runs(stack: Stack, model: str = MODEL) -> None:
    """`model` answers a generate (retrying while a restarted runner registers)."""
    deadline = time.monotonic() + BOUND
    last = ""
    while time.monotonic() < deadline:
        try:
            r = generate(stack, model)
        except httpx.HTTPError as err:
            last = repr(err)
        else:
            if r.status_code == 200 and r.json()["done"]:
                return
            last = r.text
        time.sleep(0.5)
    pytest.fail(f"{model} does not run: {last}\n{stack.logs()}")


def tags(stack: Stack) -> dict[str, dict[str, Any]]:
    r = httpx.get(stack.url + "/api/tags", timeout=30)
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


def assert_consistent(stack: Stack, run: bool = True) -> None:
    """What clients and Ollama can see is whole: every manifest on disk is listed, shows and
    runs; every blob it names is present with its size and digest; no temp or partial file
    is visible as a blob."""
    listed = tags(stack)
    manifests = [p for p in (stack.models_dir / "manifests").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(manifests) == len(listed), (sorted(listed), manifests)
    blobs = stack.models_dir / "blobs"
    for path in manifests:
        manifest = json.loads(path.read_bytes())
        for layer in [manifest["config"], *manifest["layers"]]:
            blob = blobs / layer["digest"].replace(":", "-")
            assert blob.stat().st_size == layer["size"], blob
            if layer["size"] < 64 << 20:  # hashing the weights on every check is too slow
                assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer["digest"]
    for name in listed:
        r = httpx.post(stack.url + "/api/show", json={"model": name}, timeout=30)
        assert r.status_code == 200, r.text
        if run:
            runs(stack, name)
    for odd in [p for p in blobs.iterdir() if not p.name.startswith("sha256-") or "-partial" in p.name]:
        digest = odd.name.split("-partial")[0].replace("sha256-", "sha256:")
        if digest.startswith("sha256:") and len(digest) == 71:
            assert httpx.head(f"{stack.url}/api/blobs/{digest}", timeout=10).status_code == 404, odd


def ps(stack: Stack) -> list[dict[str, Any]]:
    return list(httpx.get(stack.url + "/api/ps", timeout=10).json()["models"])


def unload_all(stack: Stack) -> None:
    for m in ps(stack):
        httpx.post(stack.url + "/api/generate", json={"model": m["name"], "keep_alive": 0}, timeout=30)
    deadline = time.monotonic() + 30
    while ps(stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ps(stack)


def stream_lines(
    stack: Stack, path: str, body: dict[str, Any], on_line: Any, timeout: float = BOUND
) -> list[dict[str, Any]]:
    """POST a streaming request, calling on_line(n, line) after each NDJSON line. A dropped
    connection ends the list with {"transport_error": ...}."""
    got: list[dict[str, Any]] = []
    try:
        with httpx.stream("POST", stack.url + path, json=body, timeout=timeout) as r:
            if r.status_code != 200:
                r.read()
                return [{"status_code": r.status_code, "body": r.text}]
            for line in r.iter_lines():
                if line:
                    got.append(json.loads(line))
                    on_line(len(got), got[-1])
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ConnectError) as err:
        got.append({"transport_error": repr(err)})
    return got


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as err:  # reported by the caller
            out.append(err)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def runner_busy(stack: Stack) -> bool:
    """Whether the runner process is computing (a load or a decode): its CPU time grows."""
    child = stack.child("runner")
    if child is None:
        return False
    t0 = sum(child.cpu_times()[:2])
    time.sleep(0.3)
    try:
        return sum(child.cpu_times()[:2]) - t0 > 0.1
    except psutil.Error:
        return False


# ---- generation and load ---------------------------------------------------


def test_runner_killed_mid_generation(fstack: Stack) -> None:
    old: list[int] = []

    def on_line(n: int, line: dict[str, Any]) -> None:
        if n == 3:
            old.append(kill(fstack, "runner"))

    started = time.monotonic()
    lines = stream_lines(fstack, "/api/generate", STORY, on_line)
    assert old, lines
    assert "error" in lines[-1], lines[-3:]
    assert not lines[-1].get("done"), lines[-1]
    assert time.monotonic() - started < BOUND
    wait_back(fstack, "runner", old[0])
    assert_consistent(fstack)


def kill_while_loading(fstack: Stack, service: str) -> httpx.Response:
    """SIGKILLs `service` while the runner loads the model for a generate request; returns
    the client's answer (a 200 or a 5xx, never a hang) once the service is back."""
    unload_all(fstack)
    t, out = in_thread(lambda: generate(fstack))
    deadline = time.monotonic() + 30
    while not runner_busy(fstack) and time.monotonic() < deadline:
        pass
    old = kill(fstack, service)
    t.join(BOUND + 5)
    assert not t.is_alive(), "the client hung"
    r = out[0]
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 200 or r.status_code >= 500, r.text
    wait_back(fstack, service, old)
    return r


def test_runner_killed_while_loading(fstack: Stack) -> None:
    r = kill_while_loading(fstack, "runner")  # the gateway retries once on the restarted runner
    if r.status_code != 200:
        assert "error" in r.json()
    assert_consistent(fstack)


def scheduler_loads(stack: Stack, request_id: str) -> int:
    """How many loads the scheduler has started for the request, from the stack's log."""
    lines = (json.loads(line) for line in stack.log_path.read_text().splitlines() if line.startswith("{"))
    return sum(1 for line in lines if line.get("request_id") == request_id and line["msg"] == "loading model")


def test_a_model_whose_load_kills_every_runner_fails_fast(fstack: Stack) -> None:
    """A model that crashes each runner loading it (a llama.cpp segfault, played here by a
    SIGKILL at each load) gets Ollama's runner-stopped 500 after the second attempt, not a
    wait through runner restarts until the load timeout."""
    unload_all(fstack)
    request_id = "crashy-" + secrets.token_hex(4)
    headers = {"X-Request-Id": request_id}
    t, out = in_thread(lambda: generate(fstack, headers=headers))
    killed: list[int] = []
    deadline = time.monotonic() + BOUND
    while len(killed) < 2 and time.monotonic() < deadline:
        if scheduler_loads(fstack, request_id) > len(killed):
            killed.append(kill(fstack, "runner"))
        time.sleep(0.05)
    t.join(BOUND)
    assert not t.is_alive(), "the client hung"
    r = out[0]
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 500, r.text
    assert r.json()["error"].startswith("model runner has unexpectedly stopped")
    assert scheduler_loads(fstack, request_id) == 2
    wait_back(fstack, "runner", killed[-1])
    runs(fstack)


def test_scheduler_killed_mid_generation(fstack: Stack) -> None:
    old: list[int] = []

    def on_line(n: int, line: dict[str, Any]) -> None:
        if n == 3:
            old.append(kill(fstack, "scheduler"))

    body = {"model": MODEL, "prompt": "Tell a long story.", "options": {**LONG, "num_predict": 60}}
    lines = stream_lines(fstack, "/api/generate", body, on_line)
    assert old
    # The runner does not need the scheduler to finish a stream it is serving.
    assert lines[-1].get("done") is True, lines[-3:]
    wait_back(fstack, "scheduler", old[0])
    assert_consistent(fstack)
    # The restarted scheduler adopts nothing it does not know: the old instance is unloaded
    # (it is idle), and the model loads again on demand.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(ps(fstack)) > 1:
        time.sleep(0.5)
    assert len(ps(fstack)) <= 1


def test_scheduler_killed_while_loading(fstack: Stack) -> None:
    unload_all(fstack)
    t, out = in_thread(lambda: generate(fstack))
    deadline = time.monotonic() + 30
    while not runner_busy(fstack) and time.monotonic() < deadline:
        pass
    old = kill(fstack, "scheduler")
    t.join(BOUND + 5)
    assert not t.is_alive(), "the client hung"
    r = out[0]
    assert isinstance(r, httpx.Response), r
    assert r.status_code == 200 or r.status_code >= 500, r.text
    wait_back(fstack, "scheduler", old)
    assert_consistent(fstack)


def test_gateway_killed_mid_generation(fstack: Stack) -> None:
    runs(fstack)
    old: list[int] = []

    def on_line(n: int, line: dict[str, Any]) -> None:
        if n == 3:
            old.append(kill(fstack, "gateway"))

    started = time.monotonic()
    lines = stream_lines(fstack, "/api/generate", STORY, on_line)
    assert old
    assert "transport_error" in lines[-1], lines[-3:]
    assert time.monotonic() - started < BOUND
    wait_back(fstack, "gateway", old[0])
    # The dead gateway's lease is reclaimed (CORRAL_LEASE_IDLE_TIMEOUT=3s here) and its runner
    # sequence was cancelled, so the one slot serves the next request promptly.
    t0 = time.monotonic()
    r = generate(fstack, timeout=30)
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 30
    assert_consistent(fstack)


def test_registry_killed_while_loading(fstack: Stack) -> None:
    kill_while_loading(fstack, "registry")
    assert_consistent(fstack)


# ---- create, upload, delete ----------------------------------------------


def test_registry_killed_mid_upload(fstack: Stack, gemma_path: Path, tmp_path: Path) -> None:
    data = gemma_path.read_bytes()[: 96 << 20] + b"x"  # a blob of its own, never stored before
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    old: list[int] = []

    def body() -> Iterator[bytes]:
        for i in range(0, len(data), 1 << 20):
            if i == 32 << 20:
                old.append(kill(fstack, "registry"))
                time.sleep(0.5)
            yield data[i : i + (1 << 20)]

    try:
        r = httpx.post(f"{fstack.url}/api/blobs/{digest}", content=body(), timeout=BOUND)
        status = r.status_code
    except httpx.HTTPError:
        status = 0  # the gateway may drop the connection of an upload it cannot forward
    assert old
    assert status == 0 or status >= 500, status
    wait_back(fstack, "registry", old[0])
    assert httpx.head(f"{fstack.url}/api/blobs/{digest}", timeout=10).status_code == 404
    assert not (fstack.models_dir / "blobs" / digest.replace(":", "-")).exists()
    assert_consistent(fstack, run=False)
    # The same upload again succeeds.
    r = httpx.post(f"{fstack.url}/api/blobs/{digest}", content=data, timeout=BOUND)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2])
def test_registry_killed_during_create_and_delete(fstack: Stack, delay: float) -> None:
    """A create or a delete cut short at any point leaves the model whole or absent."""
    name = f"killed-create-{int(delay * 1000)}:latest"
    old: list[int] = []

    def cut() -> None:
        time.sleep(delay)
        old.append(kill(fstack, "registry"))

    killer = threading.Thread(target=cut)
    killer.start()
    try:
        r = httpx.post(
            fstack.url + "/api/create", json={"model": name, "from": MODEL, "system": "Be brief."}, timeout=BOUND
        )
        assert r.status_code == 200 or r.status_code >= 500, r.text
    except httpx.HTTPError:
        pass  # the gateway may drop a request whose registry call died
    killer.join()
    wait_back(fstack, "registry", old[0])
    assert_consistent(fstack, run=False)
    if name not in tags(fstack):
        assert httpx.post(fstack.url + "/api/create", json={"model": name, "from": MODEL}, timeout=BOUND).is_success
    assert name in tags(fstack)

    old.clear()
    killer = threading.Thread(target=cut)
    killer.start()
    with contextlib.suppress(httpx.HTTPError):
        httpx.request("DELETE", fstack.url + "/api/delete", json={"model": name}, timeout=BOUND)
    killer.join()
    wait_back(fstack, "registry", old[0])
    assert_consistent(fstack, run=False)
    if name in tags(fstack):
        r = httpx.request("DELETE", fstack.url + "/api/delete", json={"model": name}, timeout=BOUND)
        assert r.status_code == 200, r.text
    assert name not in tags(fstack)
    assert f"{MODEL}:latest" in tags(fstack)


# ---- pull and push ---------------------------------------------------------


@pytest.fixture(scope="module")
def published(fstack: Stack, oci: OciRegistry) -> str:
    name = f"{oci.host}/library/faults:latest"
    r = httpx.post(fstack.url + "/api/copy", json={"source": MODEL, "destination": name}, timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(fstack.url + "/api/push", json={"model": name, "insecure": True, "stream": False}, timeout=600)
    assert r.status_code == 200, r.text
    return name


def test_registry_killed_mid_push(fstack: Stack, oci: OciRegistry, gemma_path: Path) -> None:
    size = gemma_path.stat().st_size
    proxy = Proxy(oci.host, rate_up=16 << 20)
    try:
        name = f"{proxy.host}/library/pushed:latest"
        assert httpx.post(fstack.url + "/api/copy", json={"source": MODEL, "destination": name}, timeout=60).is_success
        old: list[int] = []

        def on_line(n: int, line: dict[str, Any]) -> None:
            if not old and proxy.bytes_up > size * 0.3:
                old.append(kill(fstack, "registry"))

        lines = stream_lines(fstack, "/api/push", {"model": name, "insecure": True}, on_line)
        assert old, lines[-3:]
        assert "error" in lines[-1] or "transport_error" in lines[-1], lines[-3:]
        assert not [e for e in lines if e.get("status") == "success"]
        wait_back(fstack, "registry", old[0])
        assert_consistent(fstack, run=False)
        # Pushing again completes, and what landed remotely is whole.
        proxy.rate_up = 0
        r = httpx.post(fstack.url + "/api/push", json={"model": name, "insecure": True, "stream": False}, timeout=300)
        assert r.status_code == 200, r.text
        with gemma_path.open("rb") as f:
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        assert oci.blob_data(digest).stat().st_size == size
    finally:
        proxy.close()


def test_gateway_killed_mid_pull_then_resumes(
    fstack: Stack, oci: OciRegistry, published: str, tmp_path_factory: pytest.TempPathFactory, gemma_path: Path
) -> None:
    size = gemma_path.stat().st_size
    dest = start_stack(tmp_path_factory.mktemp("pulldest"))
    proxy = Proxy(oci.host, rate=12 << 20)
    try:
        name = published.replace(oci.host, proxy.host)
        old: list[int] = []
        killed_at: list[int] = []

        def on_line(n: int, line: dict[str, Any]) -> None:
            if not old and proxy.bytes_down > size * 0.35:
                killed_at.append(proxy.bytes_down)
                old.append(kill(dest, "gateway"))

        lines = stream_lines(dest, "/api/pull", {"model": name, "insecure": True}, on_line)
        assert old, lines[-3:]
        assert "transport_error" in lines[-1], lines[-3:]
        wait_back(dest, "gateway", old[0])
        assert_consistent(dest, run=False)

        proxy.rate, proxy.bytes_down = 0, 0
        r = httpx.post(dest.url + "/api/pull", json={"model": name, "insecure": True, "stream": False}, timeout=300)
        assert r.status_code == 200, r.text
        # The pull the dead gateway started either finished in the registry or left its
        # parts: the second pull fetches at most what the first had not.
        assert proxy.bytes_down < size - killed_at[0] * 0.5, (proxy.bytes_down, killed_at)
        assert_consistent(dest)
    finally:
        proxy.close()
        stop_stack(dest)
