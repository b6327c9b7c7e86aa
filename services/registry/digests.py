"""Content digests: `sha256:<64 hex>` in the API, `sha256-<64 hex>` on disk.

A digest is validated here before any path is built from it, so the blob path
of a digest can never leave the blobs directory.
"""

from __future__ import annotations

import re

from corral.errors import CorralError
from corral.v1 import common_pb2

INVALID_DIGEST_MESSAGE = "invalid digest format"

# Ollama accepts upper-case hex too; we normalise to lower case (what sha256 produces).
_DIGEST_RE = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_BLOB_FILE_RE = re.compile(r"sha256-([0-9a-f]{64})")


def try_parse_digest(value: str) -> str | None:
    """Canonical "sha256:<hex>" or None."""
    m = _DIGEST_RE.fullmatch(value)
    return f"sha256:{m.group(1).lower()}" if m else None


def parse_digest(value: str) -> str:
    """Canonical "sha256:<hex>"; raises INVALID_DIGEST."""
    digest = try_parse_digest(value)
    if digest is None:
        raise CorralError(common_pb2.ERROR_REASON_INVALID_DIGEST, INVALID_DIGEST_MESSAGE)
    return digest


def blob_filename(digest: str) -> str:
    """The blob file name ("sha256-<hex>") for a digest in any accepted spelling."""
    return parse_digest(digest).replace(":", "-", 1)


def digest_from_filename(name: str) -> str | None:
    """The digest a blob file name stands for, or None for other files."""
    m = _BLOB_FILE_RE.fullmatch(name)
    return f"sha256:{m.group(1)}" if m else None


def from_hex(hexdigest: str) -> str:
    return f"sha256:{hexdigest}"
