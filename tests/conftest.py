from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.runner.native import use_batch_invariant_kernels
from tests import assets
from tests.registry.oci import OciRegistry, start_oci_registry

# llama.cpp reads its kernel switch once per process, at the first decode: set it before any
# test decodes, so the runner tests that load with batch-invariant settings (flash attention,
# q8_0 KV) get them. Stacks started by tests/stack.py drop it again (their runners decide).
use_batch_invariant_kernels()


@pytest.fixture(scope="session", autouse=True)
def llama_defaults_like_the_runner() -> Iterator[None]:
    """Tests that load models through llama-cpp-python's `Llama` directly get the runner's
    AMX workaround too (llama.cpp 0.3.36 segfaults on AMX weight buffers)."""
    from services.runner.native import high_level_defaults_like_the_runner

    with high_level_defaults_like_the_runner():
        yield


@pytest.fixture(scope="module")
def oci(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OciRegistry]:
    """A real OCI registry (Debian's docker-registry) on loopback, one per test module."""
    reg = start_oci_registry(tmp_path_factory.mktemp("oci"))
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF (≈250 MB), assembled once per machine."""
    return assets.gemma_path()


# In CI a skipped test counts as missing: it fails unless its reason is one the README allows.
ALLOWED_CI_SKIPS = ("no GPU",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (report.skipped and os.environ.get("CI")) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) else str(longrepr)
    if not any(allowed in reason for allowed in ALLOWED_CI_SKIPS):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI ({reason}); install what the test needs in .ci/run (README, Tests)"
