"""Fixtures for end-to-end tests: the real stack and the real Gemma model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import assets
from tests.e2e.cli import TERSE, corral
from tests.stack import Stack, create_model, start_stack, stop_stack

MODEL = "gemma3"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, gemma_path: Path) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield s
    finally:
        stop_stack(s)


@pytest.fixture(scope="session")
def gemma(stack: Stack, gemma_path: Path) -> str:
    events = create_model(stack.url, MODEL, gemma_path)
    assert events[-1] == {"status": "success"}
    return MODEL


@pytest.fixture(scope="session")
def gemma_digest() -> str:
    return assets.gemma_digest()


@pytest.fixture(scope="session")
def terse(stack: Stack, gemma: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("modelfile")
    (d / "Modelfile").write_text(TERSE)
    r = corral(stack, "create", "terse", "-f", str(d / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert "success" in r.stderr
    return "terse"
