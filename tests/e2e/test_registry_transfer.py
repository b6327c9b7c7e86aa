"""Pull and push through the whole stack against a real OCI registry on loopback.

The session stack (with Gemma) pushes to Debian's docker-registry; a second, fresh
stack pulls from it — directly, through a throttling proxy while its registry
service is killed mid-blob, and with a blob tampered in the remote's storage.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ggufs import write_tiny_gguf
from tests.registry.oci import OciRegistry, Proxy
from tests.stack import Stack, create_model, start_stack, stop_stack

GREEDY = {"temperature": 0, "num_predict": 8, "num_ctx": 512}


@dataclass(frozen=True)
class Published:
    name: str  # "<oci host>/library/gemma:latest"
    manifest_digest: str  # hex, as /api/tags shows it
    size: int  # bytes of the Gemma weights blob


def ndjson_post(url: str, body: dict[str, Any], timeout: float = 600) -> list[dict[str, Any]]:
    r = httpx.post(url, json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line]


def tags(stack: Stack) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(stack.url + "/api/tags", timeout=30).json()["models"]}


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def blob_file(stack: Stack, digest: str) -> Path:
    return stack.models_dir / "blobs" / digest.replace(":", "-")


def forget_all(stack: Stack) -> None:
    """Delete every model of `stack`: their blobs go with them (nothing else references them)."""
    for name in tags(stack):
        r = httpx.request("DELETE", stack.url + "/api/delete", json={"model": name}, timeout=60)
        assert r.status_code == 200, r.text
    assert tags(stack) == {}


def wait_registry_back(stack: Stack, old_pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        child = stack.child("registry")
        if child is not None and child.pid != old_pid:
            try:
                if httpx.get(stack.url + "/api/tags", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    pytest.fail(f"the registry service was not restarted:\n{stack.logs()}")


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    """A second, fresh stack that pulls what the session stack pushed."""
    s = start_stack(tmp_path_factory.mktemp("dest"))
    try:
        yield s
    finally:
        stop_stack(s)


@pytest.fixture(scope="module")
def published(stack: Stack, gemma: str, gemma_digest: str, gemma_path: Path, oci: OciRegistry) -> Published:
    name = f"{oci.host}/library/gemma:latest"
    r = httpx.post(stack.url + "/api/copy", json={"source": gemma, "destination": name}, timeout=60)
    assert r.status_code == 200, r.text
    events = ndjson_post(stack.url + "/api/push", {"model": name, "insecure": True})
    statuses = [e["status"] for e in events]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"], statuses
    weights = [e for e in events if e.get("digest") == gemma_digest]
    assert weights[0]["status"] == f"pushing {gemma_digest[7:19]}"
    assert weights[-1]["total"] == weights[-1]["completed"] == gemma_path.stat().st_size
    assert oci.blob_data(gemma_digest).stat().st_size == gemma_path.stat().st_size
    return Published(name, tags(stack)[name]["digest"], gemma_path.stat().st_size)


def test_push_then_pull_into_a_fresh_stack_and_generate(dest: Stack, published: Published, gemma_digest: str) -> None:
    forget_all(dest)
    events = ndjson_post(dest.url + "/api/pull", {"model": published.name, "insecure": True})
    assert not [e for e in events if "error" in e], events
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    weights = [e for e in events if e.get("digest") == gemma_digest]
    assert {e["status"] for e in weights} == {f"pulling {gemma_digest[7:19]}"}
    assert all(e["total"] == published.size for e in weights)
    assert "completed" not in weights[0]  # Ollama's first event of a layer
    done = [e["completed"] for e in weights if "completed" in e]
    assert done == sorted(done) and done[-1] == published.size

    pulled = tags(dest)[published.name]
    assert pulled["digest"] == published.manifest_digest  # byte-identical manifest
    assert pulled["details"]["family"] == "gemma3" and pulled["size"] > published.size
    assert sha256_file(blob_file(dest, gemma_digest)) == gemma_digest

    body = {"model": published.name, "prompt": "Why is the sky blue?", "stream": False, "options": GREEDY}
    r = httpx.post(dest.url + "/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["done"] and r.json()["response"] and r.json()["eval_count"] > 0


def test_pull_resumes_after_the_registry_service_is_killed(
    dest: Stack, published: Published, oci: OciRegistry, gemma_digest: str
) -> None:
    forget_all(dest)
    assert httpx.head(f"{dest.url}/api/blobs/{gemma_digest}").status_code == 404
    # Per connection: 4 parts in flight make ≈16 MB/s, so the 250 MB blob takes ≈15 s.
    proxy = Proxy(oci.host, rate=4 << 20)
    try:
        name = published.name.replace(oci.host, proxy.host)
        registry = dest.child("registry")
        assert registry is not None
        killed_at = 0
        first: list[dict[str, Any]] = []
        with httpx.stream("POST", dest.url + "/api/pull", json={"model": name, "insecure": True}, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line:
                    first.append(json.loads(line))
                if not killed_at and proxy.bytes_down > published.size * 0.35:
                    killed_at = proxy.bytes_down
                    registry.kill()  # SIGKILL, mid-blob
        assert 0 < killed_at < published.size
        assert "error" in first[-1] and not [e for e in first if e.get("status") == "success"], first[-3:]
        wait_registry_back(dest, registry.pid)
        assert list((dest.models_dir / "blobs").glob("*-partial"))
        assert name not in tags(dest)

        proxy.rate, proxy.bytes_down = 0, 0
        second = ndjson_post(dest.url + "/api/pull", {"model": name, "insecure": True})
        assert second[-1] == {"status": "success"}, second[-3:]
        # The resumed pull fetched only what the first had not written (and saved) yet.
        assert proxy.bytes_down < published.size - killed_at * 0.5, (proxy.bytes_down, killed_at)
    finally:
        proxy.close()
    assert sha256_file(blob_file(dest, gemma_digest)) == gemma_digest
    assert not list((dest.models_dir / "blobs").glob("*-partial"))
    assert tags(dest)[name]["digest"] == published.manifest_digest


def test_tampered_remote_blob_is_refused(stack: Stack, dest: Stack, oci: OciRegistry, tmp_path: Path) -> None:
    tiny = write_tiny_gguf(tmp_path / "tampered.gguf", seed=31)
    name = f"{oci.host}/library/tampered:v1"
    assert create_model(stack.url, name, tiny.path)[-1] == {"status": "success"}
    assert ndjson_post(stack.url + "/api/push", {"model": name, "insecure": True})[-1] == {"status": "success"}
    data = oci.blob_data(tiny.digest)
    original = data.read_bytes()
    try:
        data.write_bytes(bytes(len(original)))  # same size, other bytes
        streamed = ndjson_post(dest.url + "/api/pull", {"model": name, "insecure": True})
        whole = httpx.post(dest.url + "/api/pull", json={"model": name, "insecure": True, "stream": False}, timeout=120)
    finally:
        data.write_bytes(original)
    want = f"digest mismatch, file must be downloaded again: want {tiny.digest}, got "
    assert streamed[-1]["error"].startswith(want), streamed[-3:]
    assert not [e for e in streamed if e.get("status") in ("writing manifest", "success")]
    assert whole.status_code == 400 and whole.json()["error"].startswith(want)
    assert name not in tags(dest)
    assert httpx.head(f"{dest.url}/api/blobs/{tiny.digest}").status_code == 404
    assert not list((dest.models_dir / "blobs").glob(tiny.digest.replace(":", "-") + "*"))
    assert not list((dest.models_dir / "manifests").rglob("tampered"))

    # With the remote repaired, the same pull succeeds.
    assert ndjson_post(dest.url + "/api/pull", {"model": name, "insecure": True})[-1] == {"status": "success"}
    assert sha256_file(blob_file(dest, tiny.digest)) == tiny.digest
