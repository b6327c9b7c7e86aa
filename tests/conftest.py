from __future__ import annotations

from pathlib import Path

import pytest

from tests import assets


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (≈250 MB), assembled once per machine."""
    return assets.gemma_path()
