from __future__ import annotations

import pytest

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.registry.digests import blob_filename, digest_from_filename, parse_digest, try_parse_digest

HEX = "ab" * 32


def test_normalises_both_spellings() -> None:
    assert parse_digest(f"sha256:{HEX}") == f"sha256:{HEX}"
    assert parse_digest(f"sha256-{HEX}") == f"sha256:{HEX}"
    assert parse_digest(f"sha256:{HEX.upper()}") == f"sha256:{HEX}"
    assert blob_filename(f"sha256:{HEX}") == f"sha256-{HEX}"
    assert digest_from_filename(f"sha256-{HEX}") == f"sha256:{HEX}"
    assert digest_from_filename(f"sha256-{HEX}-partial") is None


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "sha256:",
        HEX,
        f"sha256:{HEX[:-1]}",
        f"sha256:{HEX}0",
        f"sha256:{HEX}\n",
        f"sha512:{HEX}",
        f"sha256:../../{HEX[6:]}",
        f"sha256/{HEX}",
        f" sha256:{HEX}",
        f"sha256:{HEX[:-1]}g",
    ],
)
def test_rejects_invalid(raw: str) -> None:
    assert try_parse_digest(raw) is None
    with pytest.raises(CorralError) as info:
        blob_filename(raw)
    assert info.value.reason == common_pb2.ERROR_REASON_INVALID_DIGEST
    assert info.value.message == "invalid digest format"
