from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry import store as store_module
from services.registry.names import parse_name
from services.registry.store import Store, atomic_write
from tests.registry.helpers import all_files


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "models")
    s.prepare()
    return s


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "d" / "f"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["f"]
    assert target.stat().st_mode & 0o777 == 0o644


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(store_module.os, "fsync", broken_fsync)
    target = tmp_path / "d" / "f"
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(target, b"data")
    assert os.listdir(target.parent) == []


def test_failed_rename_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("no rename today")

    monkeypatch.setattr(store_module.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_blob_writer_verifies(store: Store) -> None:
    data = b"x" * 100_000
    writer = store.open_blob(_digest(data))
    writer.write(data[:5000])
    writer.write(data[5000:])
    assert writer.commit() == len(data)
    assert store.blob_path(_digest(data)).read_bytes() == data
    assert store.blob_size(_digest(data)) == len(data)


def test_blob_writer_mismatch_leaves_nothing(store: Store) -> None:
    expected = _digest(b"expected")
    writer = store.open_blob(expected)
    writer.write(b"something else")
    with pytest.raises(CorralError) as info:
        writer.commit()
    assert info.value.reason == common_pb2.ERROR_REASON_DIGEST_MISMATCH
    assert info.value.message == f'digest mismatch, expected "{expected}", got "{_digest(b"something else")}"'
    assert all_files(store.root) == set()


def test_put_blob_is_idempotent(store: Store) -> None:
    assert store.put_blob(b"hello") == (_digest(b"hello"), True)
    assert store.put_blob(b"hello") == (_digest(b"hello"), False)


def test_manifest_paths_and_case_insensitive_lookup(store: Store) -> None:
    entry = store.write_manifest(parse_name("Me/Model:V1"), b"{}\n")
    assert entry.key == "registry.ollama.ai/Me/Model/V1"
    found = store.find_manifest(parse_name("me/model:v1"))
    assert found is not None
    assert found.path == entry.path
    assert found.name == parse_name("Me/Model:V1")
    # A new tag reuses the existing directory casing.
    key, _ = store.manifest_path_for_write(parse_name("ME/MODEL:v2"))
    assert key == "registry.ollama.ai/Me/Model/v2"
    assert store.find_manifest(parse_name("me/other")) is None


def test_host_with_port_is_written_encoded_and_read_plain(store: Store) -> None:
    entry = store.write_manifest(parse_name("localhost:5000/ns/m:t"), b"{}\n")
    assert entry.key == "localhost%3A5000/ns/m/t"
    plain = store.manifests_dir / "example.com:8080" / "ns" / "m" / "t"
    plain.parent.mkdir(parents=True)
    plain.write_bytes(b"{}\n")
    found = store.find_manifest(parse_name("EXAMPLE.com:8080/ns/m:t"))
    assert found is not None
    assert found.path == plain
    names = {e.name.full() for e in store.scan_manifests()}
    assert names == {"localhost:5000/ns/m:t", "example.com:8080/ns/m:t"}


def test_scan_skips_junk(store: Store) -> None:
    store.write_manifest(parse_name("m"), b"{}\n")
    tag_dir = store.manifests_dir / "registry.ollama.ai" / "library" / "m"
    (tag_dir / ".tmp-latest-abc").write_bytes(b"partial")
    (tag_dir / "bad tag").write_bytes(b"{}")
    (tag_dir / "subdir").mkdir()
    (store.manifests_dir / "stray-file").write_bytes(b"")
    assert [e.key for e in store.scan_manifests()] == ["registry.ollama.ai/library/m/latest"]


def test_read_blob_limits(store: Store) -> None:
    digest, _ = store.put_blob(b"0123456789")
    assert store.read_blob(digest, 10) == b"0123456789"
    with pytest.raises(CorralError):
        store.read_blob(digest, 9)
    with pytest.raises(CorralError) as info:
        store.read_blob("sha256:" + "0" * 64, 9)
    assert info.value.reason == common_pb2.ERROR_REASON_BLOB_NOT_FOUND
