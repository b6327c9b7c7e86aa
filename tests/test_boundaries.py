"""The architecture rules as code: the import-linter contracts in pyproject.toml hold, and each
one breaks when a forbidden import is added to a copy of the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("corral", "corral_app", "services")
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, "-c", LINT, "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_contracts_hold() -> None:
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the packages and the contracts, for injecting imports into."""
    dst = tmp_path_factory.mktemp("tree")
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("corral/errors.py", "import services.registry.names", "Layers"),
        ("corral/config.py", "from corral_app import supervisor", "Layers"),
        ("services/runner/core.py", "import corral_app.cli", "Layers"),
        ("services/gateway/app.py", "from services.registry import names", "Services are independent"),
        ("services/scheduler/core.py", "import services.runner.devices", "Services are independent"),
        ("services/gateway/app.py", "import llama_cpp", "Only the runner"),
        ("services/scheduler/core.py", "from llama_cpp import Llama", "Only the runner"),
        ("corral/logs.py", "import llama_cpp", "Only the runner"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(tree: Path, module: str, line: str, contract: str) -> None:
    path = tree / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # injected by the test\n")
    try:
        res = _lint(tree)
    finally:
        path.write_text(original)
    assert res.returncode != 0, res.stdout
    broken = [ln for ln in res.stdout.splitlines() if " BROKEN" in ln]
    assert any(ln.startswith(contract) for ln in broken), res.stdout
