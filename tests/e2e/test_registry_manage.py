"""Model management over HTTP with the official `ollama` client, and hostile input.

show / copy / delete / pull / push against the real stack (pushes go to Debian's
docker-registry on loopback); path traversal in digests, file names and model
names; malformed GGUF uploads. Every refusal is a 400 and leaves the store alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from tests import ggufs
from tests.registry.oci import OciRegistry
from tests.stack import Stack, create_model

TEMPLATE = "<start_of_turn>user\n{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def client(stack: Stack) -> ollama.Client:
    return ollama.Client(host=stack.url, timeout=300)


def blob_status(stack: Stack, digest: str) -> int:
    return httpx.head(f"{stack.url}/api/blobs/{digest}", timeout=30).status_code


def tag_names(stack: Stack) -> set[str]:
    return {m["name"] for m in httpx.get(stack.url + "/api/tags", timeout=30).json()["models"]}


def manifest_of(stack: Stack, host: str, namespace: str, model: str, tag: str) -> dict[str, Any]:
    path = stack.models_dir / "manifests" / host.replace(":", "%3A") / namespace / model / tag
    data: dict[str, Any] = json.loads(path.read_bytes())
    return data


def upload(stack: Stack, path: Path) -> str:
    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"{stack.url}/api/blobs/{digest}", content=data, timeout=60)
    assert r.status_code in (200, 201), r.text
    return digest


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below `root` with its size and mtime."""
    out: dict[str, tuple[int, int]] = {}
    for p in root.rglob("*"):
        try:
            if p.is_file():
                st = p.stat()
                out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
        except OSError:
            continue  # a runtime file that came and went
    return out


# show / copy / delete


def test_show_copy_delete_with_the_ollama_client(stack: Stack, gemma: str, gemma_digest: str,
                                                 client: ollama.Client) -> None:  # fmt: skip
    name = "gemma-managed"
    client.create(model=name, from_=gemma, template=TEMPLATE, system="Answer briefly.",
                  parameters={"temperature": 0.5, "stop": ["<end_of_turn>"]})  # fmt: skip

    shown = client.show(name)
    assert shown.template == TEMPLATE
    assert shown.modelfile is not None and "FROM " in shown.modelfile and "TEMPLATE" in shown.modelfile
    assert 'SYSTEM "Answer briefly."' in shown.modelfile or "SYSTEM Answer briefly." in shown.modelfile
    assert shown.parameters is not None and "temperature" in shown.parameters and "0.5" in shown.parameters
    assert "<end_of_turn>" in shown.parameters
    assert shown.details is not None
    assert (shown.details.format, shown.details.family) == ("gguf", "gemma3")
    assert shown.details.quantization_level == "Q4_K_M" and shown.details.parameter_size
    assert shown.modelinfo is not None
    assert shown.modelinfo["general.architecture"] == "gemma3"
    assert shown.modelinfo["gemma3.context_length"] == 32768
    assert shown.capabilities is not None and "completion" in shown.capabilities
    assert isinstance(shown.modified_at, datetime)
    raw = httpx.post(stack.url + "/api/show", json={"model": name}, timeout=60).json()
    assert raw["system"] == "Answer briefly." and raw["template"] == TEMPLATE
    assert {"modelfile", "parameters", "details", "model_info", "capabilities", "modified_at"} <= raw.keys()
    assert raw["modified_at"].endswith("Z") or "+" in raw["modified_at"]

    client.copy(name, "gemma-managed-copy")
    names = tag_names(stack)
    assert {f"{name}:latest", "gemma-managed-copy:latest"} <= names
    mine = manifest_of(stack, "registry.ollama.ai", "library", name, "latest")
    assert manifest_of(stack, "registry.ollama.ai", "library", "gemma-managed-copy", "latest") == mine
    own = {la["digest"] for la in mine["layers"] if la["mediaType"] != "application/vnd.ollama.image.model"}
    assert own and all(blob_status(stack, d) == 200 for d in own)

    client.delete("gemma-managed-copy")  # the original still references every blob
    assert "gemma-managed-copy:latest" not in tag_names(stack)
    assert all(blob_status(stack, d) == 200 for d in own | {gemma_digest})
    assert client.show(name).template == TEMPLATE

    client.delete(name)  # its own layers go; the weights are shared with `gemma` and stay
    assert f"{name}:latest" not in tag_names(stack)
    assert all(blob_status(stack, d) == 404 for d in own)
    assert blob_status(stack, gemma_digest) == 200
    assert client.show(gemma).modelinfo["general.architecture"] == "gemma3"  # type: ignore[index]

    for call in (lambda: client.delete(name), lambda: client.show(name), lambda: client.copy(name, "x")):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404
    r = httpx.request("DELETE", stack.url + "/api/delete", json={"model": "no-such-model"}, timeout=30)
    assert (r.status_code, r.json()["error"]) == (404, "model 'no-such-model' not found")


# pull / push through the client


def test_push_delete_pull_round_trip_with_the_ollama_client(
    stack: Stack, client: ollama.Client, oci: OciRegistry, tmp_path: Path
) -> None:
    tiny = ggufs.write_tiny_gguf(tmp_path / "round.gguf", seed=41)
    name = f"{oci.host}/library/round:v1"
    assert create_model(stack.url, name, tiny.path)[-1] == {"status": "success"}
    digest_before = manifest_of(stack, oci.host, "library", "round", "v1")

    pushed = list(client.push(name, insecure=True, stream=True))
    statuses = [p.status for p in pushed]
    assert statuses[0] == "retrieving manifest" and statuses[-2:] == ["pushing manifest", "success"]
    layer = [p for p in pushed if p.digest == tiny.digest]
    assert layer[-1].status == f"pushing {tiny.digest[7:19]}" and layer[-1].completed == layer[-1].total == tiny.size

    client.delete(name)  # the weights blob is this model's alone: it goes
    assert blob_status(stack, tiny.digest) == 404

    pulled = list(client.pull(name, insecure=True, stream=True))
    statuses = [p.status for p in pulled]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layer = [p for p in pulled if p.digest == tiny.digest]
    assert layer and all(p.status == f"pulling {tiny.digest[7:19]}" and p.total == tiny.size for p in layer)
    assert layer[-1].completed == tiny.size
    assert manifest_of(stack, oci.host, "library", "round", "v1") == digest_before
    blob = stack.models_dir / "blobs" / tiny.digest.replace(":", "-")
    assert ggufs.file_digest(blob) == tiny.digest
    assert client.show(name).modelinfo["general.architecture"] == "llama"  # type: ignore[index]

    with pytest.raises(ollama.ResponseError) as err:  # plain http without insecure
        client.pull(f"http://{oci.host}/library/round:v1")
    assert "insecure" in str(err.value.error)
    client.delete(name)


# path traversal

BAD_NAMES = ["../../evil", "..", "a/../../evil", "/etc/passwd", "evil\\..\\x", "library/../../evil:v1",
             "x/y/z/w/evil", "evil:../../x", "evil:" + "a" * 200, "ev il", "%2e%2e/evil", "evil\x00"]  # fmt: skip
# Digests that reach the blob handler (no '/': those never route to it).
BAD_DIGESTS = ["sha256:..", "sha256:" + "." * 64, "sha256:" + "a" * 63, "sha256:" + "g" * 64,
               "sha512:" + "a" * 64, "sha256-" + "a" * 64 + "..", "sha256:" + "a" * 64 + "%00",
               "sha256:..%5C..%5Cevil"]  # fmt: skip


def test_path_traversal_is_refused_and_nothing_is_written(stack: Stack, gemma: str, tmp_path: Path) -> None:
    root = stack.models_dir.parent  # the stack's temp dir: models, runtime dir, log
    models_before = snapshot(stack.models_dir / "manifests")
    blobs_before = {p.name for p in (stack.models_dir / "blobs").iterdir()}
    good = upload(stack, ggufs.write_tiny_gguf(tmp_path / "t.gguf", seed=51).path)
    blobs_before.add(good.replace(":", "-"))
    data = b"payload"

    with httpx.Client(base_url=stack.url, timeout=60) as c:
        for digest in BAD_DIGESTS:
            r = c.post(f"/api/blobs/{digest}", content=data)
            assert r.status_code == 400, (digest, r.text)
            assert r.json()["error"] == "invalid digest format", digest
            assert c.head(f"/api/blobs/{digest}").status_code == 400, digest
        for digest in ("..", "sha256:../../../evil", "..%2F..%2Fevil", "sha256:%2e%2e%2fevil"):
            assert c.post(f"/api/blobs/{digest}", content=data).status_code in (400, 404), digest
            r = c.post("/api/create", json={"model": "ok-name", "files": {"m.gguf": digest}, "stream": False})
            assert r.status_code == 400, (digest, r.text)

        for path in ("../evil.gguf", "/etc/passwd", "a/../../evil.gguf", "..", "a\\..\\evil.gguf", "C:evil.gguf",
                     "a//b.gguf", "./../evil.gguf", "evil\x00.gguf"):  # fmt: skip
            r = c.post("/api/create", json={"model": "ok-name", "files": {path: good}, "stream": False})
            assert r.status_code == 400 and r.json()["error"] == "file path must be relative", (path, r.text)

        for name in BAD_NAMES:
            r = c.post("/api/create", json={"model": name, "files": {"m.gguf": good}, "stream": False})
            assert r.status_code == 400, (name, r.text)
            for method, url, body in (
                ("POST", "/api/show", {"model": name}),
                ("POST", "/api/copy", {"source": gemma, "destination": name}),
                ("POST", "/api/copy", {"source": name, "destination": "ok-name"}),
                ("DELETE", "/api/delete", {"model": name}),
                ("POST", "/api/pull", {"model": name, "stream": False}),
                ("POST", "/api/push", {"model": name, "stream": False}),
                ("POST", "/api/create", {"model": "ok-name", "from": name, "stream": False}),
            ):
                r = c.request(method, url, json=body)
                assert r.status_code == 400, (method, url, name, r.status_code, r.text)

        # A name whose path exists on disk answers exactly like one whose path does not.
        traversal = c.post("/api/show", json={"model": "../../models/manifests"})
        nowhere = c.post("/api/show", json={"model": "../../nowhere/at-all"})
        assert traversal.status_code == nowhere.status_code == 400
        assert traversal.json()["error"] == nowhere.json()["error"] == "invalid model name"
        assert "ok-name:latest" not in tag_names(stack)

    assert snapshot(stack.models_dir / "manifests") == models_before
    assert {p.name for p in (stack.models_dir / "blobs").iterdir()} == blobs_before
    assert not list(root.parent.rglob("*evil*"))
    assert not [p for p in root.rglob("*") if p.name in ("passwd", "ok-name")]


# malformed GGUF


def truncated(keep: int) -> Callable[[Path], Path]:
    """The first `keep` bytes of a valid tiny model (negative: all but the last -keep)."""
    return lambda p: ggufs.write_truncated(ggufs.write_tiny_gguf(p.with_suffix(".src"), seed=abs(keep)).path, p, keep)


MALFORMED: dict[str, Callable[[Path], Path]] = {
    "truncated": truncated(900),
    "truncated-header": truncated(20),
    "truncated-data": truncated(-64),  # metadata whole, the last tensor short
    "huge-string-length": ggufs.write_huge_string_length,
    "huge-tensor-count": ggufs.write_huge_tensor_count,
    "huge-kv-count": ggufs.write_huge_kv_count,
    "huge-array": ggufs.write_huge_array,
    "bad-tensor-offset": ggufs.write_bad_tensor_offset,
    "huge-tensor-dims": ggufs.write_huge_tensor_dims,
    "bad-version": ggufs.write_bad_version,
    "not-gguf": ggufs.write_not_gguf,
}


def test_malformed_gguf_uploads_are_400_and_the_stack_stays_up(stack: Stack, tmp_path: Path) -> None:
    registry = stack.child("registry")
    assert registry is not None
    rss_before = registry.memory_info().rss
    for kind, write in MALFORMED.items():
        digest = upload(stack, write(tmp_path / f"{kind}.gguf"))
        body = {"model": f"malformed-{kind}", "files": {"model.gguf": digest}}
        r = httpx.post(stack.url + "/api/create", json={**body, "stream": False}, timeout=60)
        assert r.status_code == 400, (kind, r.status_code, r.text)
        assert r.json()["error"], kind
        streamed = [json.loads(line) for line in httpx.post(stack.url + "/api/create", json=body,
                                                            timeout=60).text.splitlines()]  # fmt: skip
        assert streamed[-1].get("error") == r.json()["error"], (kind, streamed)
    assert not [n for n in tag_names(stack) if n.startswith("malformed-")]
    same = stack.child("registry")
    assert same is not None and same.pid == registry.pid  # never crashed, never restarted
    assert same.memory_info().rss - rss_before < 64 << 20  # no allocation sized by a header's claims
    assert httpx.get(stack.url + "/api/tags", timeout=30).status_code == 200
