from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.registry.core import Registry
from tests.ggufs import TinyGGUF, write_tiny_gguf
from tests.registry.helpers import JINJA_WITH_TOOLS


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyGGUF:
    """A tiny llama GGUF with a Jinja chat template that mentions tools."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", chat_template=JINJA_WITH_TOOLS)


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
async def registry(models_dir: Path) -> AsyncIterator[Registry]:
    reg = await Registry.open(models_dir)
    try:
        yield reg
    finally:
        await reg.close()
