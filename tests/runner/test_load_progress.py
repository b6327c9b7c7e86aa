"""llama.cpp reports load progress to the runner, and an unload during a load aborts it."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import CorralError
from services.runner.native import LoadSpec, NativeModel


def test_progress_is_reported_up_to_complete(gemma_path: Path) -> None:
    seen: list[float] = []

    def record(fraction: float) -> bool:
        seen.append(fraction)
        return True

    nm = NativeModel(LoadSpec(str(gemma_path), num_ctx=256), on_progress=record)
    try:
        assert seen and seen == sorted(seen) and seen[-1] == pytest.approx(1.0)
    finally:
        nm.free()


def test_returning_false_aborts_the_load(gemma_path: Path) -> None:
    with pytest.raises(CorralError) as err:
        NativeModel(LoadSpec(str(gemma_path), num_ctx=256), on_progress=lambda f: False)
    assert err.value.reason_name == "LOAD_FAILED"
