"""Run the real `corral` CLI as a user would, against a stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.stack import Stack, free_port

TERSE = (
    'FROM gemma3\nSYSTEM """You answer briefly."""\n'
    "PARAMETER temperature 0\nPARAMETER num_predict 12\nPARAMETER num_ctx 1024\n"
)


def corral(
    stack: Stack | None, *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CORRAL_HOST=stack.url if stack else f"127.0.0.1:{free_port()}")
    env.pop("OLLAMA_HOST", None)
    return subprocess.run(
        [sys.executable, "-m", "corral_app", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )
