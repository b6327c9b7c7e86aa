"""A pull and a create into a full filesystem: a 64 MiB tmpfs holds the stack's model store.

Both fail with Ollama's `no space left on device` error (500), leave nothing half-written
(no blob, manifest or temp file, so the space is free again) and the stack keeps serving.
Mounting needs root (CAP_SYS_ADMIN), as CI runs; elsewhere the module is skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ggufs import write_tiny_gguf
from tests.registry.oci import OciRegistry
from tests.stack import Stack, create_model, start_stack, stop_stack

pytestmark = pytest.mark.e2e

SIZE = 64 << 20
BIG = 96 << 20  # larger than the filesystem
NO_SPACE = "no space left on device"


@pytest.fixture(scope="module")
def small_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    mnt = tmp_path_factory.mktemp("small-fs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def small(small_fs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("small"), CORRAL_MODELS=str(small_fs / "models"))
    s = dataclasses.replace(s, models_dir=small_fs / "models")
    try:
        yield s
    finally:
        stop_stack(s)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _upload(oci: OciRegistry, repo: str, data: bytes) -> str:
    """A monolithic blob upload through the distribution API."""
    digest = _digest(data)
    r = httpx.post(f"http://{oci.host}/v2/{repo}/blobs/uploads/", timeout=30)
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    url = location if location.startswith("http") else f"http://{oci.host}{location}"
    sep = "&" if "?" in url else "?"
    r = httpx.put(f"{url}{sep}digest={digest}", content=data, timeout=120)
    assert r.status_code == 201, r.text
    return digest


def _publish_big(oci: OciRegistry, tmp: Path) -> str:
    """A model whose weights layer (a tiny GGUF padded to 96 MiB) cannot fit the store."""
    tiny = write_tiny_gguf(tmp / "big.gguf", seed=5).path.read_bytes()
    weights = tiny + bytes(BIG - len(tiny))
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "F32"}).encode()
    repo = "library/big"
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "digest": _upload(oci, repo, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.ollama.image.model",
                "digest": _upload(oci, repo, weights),
                "size": len(weights),
            }
        ],
    }
    r = httpx.put(
        f"http://{oci.host}/v2/{repo}/manifests/latest",
        content=json.dumps(manifest).encode(),
        headers={"content-type": manifest["mediaType"]},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return f"{oci.host}/{repo}:latest"


def _assert_clean(stack: Stack, free_at_least: int) -> None:
    """Nothing half-written remains: no temp, partial or unreferenced file, and the space is back."""
    blobs = stack.models_dir / "blobs"
    leftovers = [p.name for p in blobs.iterdir() if p.name.startswith(".") or "partial" in p.name]
    assert not leftovers, leftovers
    used = sum(p.stat().st_size for p in stack.models_dir.rglob("*") if p.is_file())
    assert SIZE - used >= free_at_least, used


def _keeps_serving(stack: Stack, tmp: Path, name: str) -> None:
    tiny = write_tiny_gguf(tmp / f"{name}.gguf", seed=len(name))
    assert create_model(stack.url, name, tiny.path)[-1] == {"status": "success"}
    r = httpx.post(stack.url + "/api/show", json={"model": name}, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.request("DELETE", stack.url + "/api/delete", json={"model": name}, timeout=30)
    assert r.status_code == 200, r.text


def _ndjson(stack: Stack, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = httpx.post(stack.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line]


def test_pull_into_a_full_disk(small: Stack, oci: OciRegistry, tmp_path: Path) -> None:
    name = _publish_big(oci, tmp_path)
    events = _ndjson(small, "/api/pull", {"model": name, "insecure": True})
    assert NO_SPACE in events[-1].get("error", ""), events[-3:]
    assert not [e for e in events if e.get("status") == "success"]

    r = httpx.post(small.url + "/api/pull", json={"model": name, "insecure": True, "stream": False}, timeout=120)
    assert r.status_code == 500, r.text
    assert NO_SPACE in r.json()["error"]

    assert name not in {m["name"] for m in httpx.get(small.url + "/api/tags", timeout=10).json()["models"]}
    assert not list((small.models_dir / "manifests").rglob("latest"))
    _assert_clean(small, free_at_least=SIZE // 2)
    _keeps_serving(small, tmp_path, "after-pull")


def test_upload_and_create_into_a_full_disk(small: Stack, tmp_path: Path) -> None:
    # The blob upload that `ollama create` starts with.
    data = bytes(range(256)) * (BIG // 256)
    digest = _digest(data)
    r = httpx.post(f"{small.url}/api/blobs/{digest}", content=data, timeout=120)
    assert r.status_code == 500, r.text
    assert NO_SPACE in r.json()["error"]
    assert httpx.head(f"{small.url}/api/blobs/{digest}", timeout=10).status_code == 404
    _assert_clean(small, free_at_least=SIZE // 2)

    # A create whose weights fit but whose config and manifest find the disk full.
    tiny = write_tiny_gguf(tmp_path / "fits.gguf", seed=77)
    assert create_model(small.url, "fits", tiny.path)[-1] == {"status": "success"}
    filler = small.models_dir / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(bytes(1 << 20))
                f.flush()
        except OSError:
            pass
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 8, 1):  # down to the last byte
            try:
                with filler.open("ab") as f:
                    while True:
                        f.write(bytes(chunk))
                        f.flush()
            except OSError:
                pass
        body = {"model": "fits-2", "from": "fits", "system": "x" * 8192}
        r = httpx.post(small.url + "/api/create", json=body, timeout=120)
        # 500 when the first write fails, else a final error line (Ollama's rule for streams).
        last = r.json() if r.status_code == 500 else json.loads(r.text.splitlines()[-1])
        assert NO_SPACE in last.get("error", ""), r.text
        assert "fits-2:latest" not in {
            m["name"] for m in httpx.get(small.url + "/api/tags", timeout=10).json()["models"]
        }
        assert not list((small.models_dir / "manifests").rglob("fits-2"))
    finally:
        filler.unlink()
    _assert_clean(small, free_at_least=SIZE // 2)
    _keeps_serving(small, tmp_path, "after-create")
