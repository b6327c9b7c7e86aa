"""The files: blobs and manifests in Ollama's on-disk layout.

    <root>/blobs/sha256-<hex>
    <root>/manifests/<host>/<namespace>/<model>/<tag>

Everything here is blocking; the core calls it through asyncio.to_thread.
Every write goes to a hidden temp file in the destination directory, is
fsynced and checked, then renamed into place, so readers (and Ollama) only
ever see complete files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry import metrics
from services.registry.digests import blob_filename, from_hex, parse_digest
from services.registry.names import ModelName, decode_host_dir, encode_host_dir, name_from_dirs

_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600.0  # like Ollama's blob GC grace: another writer may still be busy
_FILE_MODE = 0o644


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that it appears whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f"{_TMP_PREFIX}{path.name}-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if tmp.read_bytes() != data:
            raise OSError(f"verification of {path} failed")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def digest_mismatch(expected: str, got: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_DIGEST_MISMATCH, f'digest mismatch, expected "{expected}", got "{got}"')


class BlobWriter:
    """Streams one blob into a temp file while hashing it; commit() verifies and publishes."""

    def __init__(self, blobs_dir: Path, digest: str) -> None:
        self.digest = parse_digest(digest)
        self.path = blobs_dir / blob_filename(self.digest)
        fd, tmp_name = tempfile.mkstemp(dir=blobs_dir, prefix=f"{_TMP_PREFIX}{self.path.name}-")
        self._tmp = Path(tmp_name)
        self._file = os.fdopen(fd, "wb")
        os.fchmod(fd, _FILE_MODE)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def commit(self) -> int:
        """Publish the blob; a digest mismatch removes the temp file and raises DIGEST_MISMATCH."""
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            got = from_hex(self._hash.hexdigest())
            if got != self.digest:
                metrics.VERIFY_FAILURES.labels("upload").inc()
                raise digest_mismatch(self.digest, got)
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        _fsync_dir(self.path.parent)
        return self.size

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self._tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ManifestFile:
    """A manifest found on disk. `key` is its path below manifests/, as spelled on disk."""

    key: str
    name: ModelName
    path: Path
    mtime_ns: int
    file_size: int
    inode: int


def _stat_entry(key: str, name: ModelName, path: Path) -> ManifestFile | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return ManifestFile(key, name, path, st.st_mtime_ns, st.st_size, st.st_ino)


class Store:
    """Blob and manifest files below one models directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.blobs_dir = self.root / "blobs"
        self.manifests_dir = self.root / "manifests"

    def prepare(self) -> None:
        """Create the directories and remove temp files a crash left behind."""
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.manifests_dir.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - _STALE_TMP_SECONDS
        for entry in self.blobs_dir.glob(f"{_TMP_PREFIX}*"):
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()

    # Blobs

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / blob_filename(digest)

    def blob_size(self, digest: str) -> int | None:
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return None
        return st.st_size

    def open_blob(self, digest: str) -> BlobWriter:
        return BlobWriter(self.blobs_dir, digest)

    def put_blob(self, data: bytes) -> tuple[str, bool]:
        """Store bytes as a blob; returns (digest, created)."""
        digest = from_hex(hashlib.sha256(data).hexdigest())
        path = self.blob_path(digest)
        if path.exists():
            return digest, False
        atomic_write(path, data)
        return digest, True

    def read_blob(self, digest: str, limit: int) -> bytes:
        """A small blob's bytes; raises BLOB_NOT_FOUND, or INVALID_ARGUMENT past `limit`."""
        try:
            with self.blob_path(digest).open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise blob_not_found(digest) from None
        if len(data) > limit:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, f'blob "{digest}" is too large')
        return data

    # Manifests

    def scan_manifests(self) -> list[ManifestFile]:
        """Every manifest file with a valid name (manifests/*/*/*/*)."""
        found: list[ManifestFile] = []
        for host in _subdirs(self.manifests_dir):
            for ns in _subdirs(host):
                for model in _subdirs(ns):
                    for tag in _entries(model):
                        name = name_from_dirs(host.name, ns.name, model.name, tag.name)
                        if name is None or not tag.is_file():
                            continue
                        key = f"{host.name}/{ns.name}/{model.name}/{tag.name}"
                        entry = _stat_entry(key, name, tag)
                        if entry is not None:
                            found.append(entry)
        return found

    def find_manifest(self, name: ModelName) -> ManifestFile | None:
        """The manifest for `name`, matching every part case-insensitively."""
        parts = self._existing_parts(name)
        if parts is None or len(parts) < 4:
            return None
        key = "/".join(parts)
        path = self.manifests_dir.joinpath(*parts)
        if not path.is_file():
            return None
        stored = name_from_dirs(*parts)
        return _stat_entry(key, stored, path) if stored else None

    def manifest_path_for_write(self, name: ModelName) -> tuple[str, Path]:
        """Where a manifest for `name` goes, reusing the casing of existing directories."""
        parts = self._existing_parts(name) or []
        fresh = [encode_host_dir(name.host), name.namespace, name.model, name.tag]
        parts = parts + fresh[len(parts) :]
        return "/".join(parts), self.manifests_dir.joinpath(*parts)

    def _existing_parts(self, name: ModelName) -> list[str] | None:
        """On-disk spellings of the longest existing prefix of `name`'s path."""
        directory = self.manifests_dir
        parts: list[str] = []
        for i, want in enumerate(name.parts):
            match = _match_entry(directory, want, is_host=(i == 0))
            if match is None:
                break
            parts.append(match)
            directory = directory / match
        return parts or None

    def read_manifest_bytes(self, path: Path, limit: int) -> bytes:
        with path.open("rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise OSError(f"manifest {path} is larger than {limit} bytes")
        return data

    def write_manifest(self, name: ModelName, data: bytes) -> ManifestFile:
        key, path = self.manifest_path_for_write(name)
        atomic_write(path, data)
        stored = name_from_dirs(*key.split("/"))
        entry = _stat_entry(key, stored or name, path)
        if entry is None:
            raise OSError(f"manifest {path} vanished after writing")
        return entry

    def delete_manifest(self, entry: ManifestFile) -> None:
        """Remove a manifest and the directories it leaves empty."""
        entry.path.unlink(missing_ok=True)
        _fsync_dir(entry.path.parent)
        directory = entry.path.parent
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty
            directory = directory.parent


def blob_not_found(digest: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_BLOB_NOT_FOUND, f'blob "{digest}" not found')


def _entries(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def _subdirs(directory: Path) -> list[Path]:
    return [p for p in _entries(directory) if p.is_dir()]


def _match_entry(directory: Path, want: str, *, is_host: bool) -> str | None:
    """The entry of `directory` spelling `want`: exact first, then case-insensitively."""
    exact = [encode_host_dir(want), want] if is_host else [want]
    for candidate in exact:
        if (directory / candidate).exists():
            return candidate
    folded = want.casefold()
    for entry in _entries(directory):
        spelled = decode_host_dir(entry.name) if is_host else entry.name
        if spelled.casefold() == folded:
            return entry.name
    return None
