"""The real `corral` CLI against the real stack, as a user types it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.cli import corral
from tests.registry.oci import start_oci_registry
from tests.stack import Stack


def test_list_and_json(stack: Stack, terse: str) -> None:
    r = corral(stack, "list")
    assert r.returncode == 0
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(x for x in rows if x.startswith("terse:latest"))
    assert "MB" in row and "ago" in row
    assert "\x1b[" not in r.stdout  # no colours or cursor moves in a pipe
    assert corral(stack, "ls", "--json").stdout.lstrip().startswith("[")


def test_show_views(stack: Stack, terse: str) -> None:
    r = corral(stack, "show", terse)
    assert r.returncode == 0
    assert "architecture" in r.stdout and "gemma3" in r.stdout and "completion" in r.stdout
    assert corral(stack, "show", terse, "--system").stdout.strip() == "You answer briefly."
    params = corral(stack, "show", terse, "--parameters").stdout
    assert "temperature" in params and "num_predict" in params
    assert "FROM" in corral(stack, "show", terse, "--modelfile").stdout


def test_create_from_a_local_gguf_file(stack: Stack, gemma: str, gemma_path: Path, tmp_path: Path) -> None:
    (tmp_path / "weights.gguf").symlink_to(gemma_path)
    (tmp_path / "Modelfile").write_text("FROM ./weights.gguf\nPARAMETER num_ctx 1024\n")
    r = corral(stack, "create", "local-file", "-f", "Modelfile", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "success" in r.stderr
    assert "local-file:latest" in corral(stack, "list").stdout
    # DRAFT names a local GGUF too: uploaded and sent as draft_files.
    (tmp_path / "Modelfile").write_text("FROM local-file\nDRAFT ./weights.gguf\n")
    r = corral(stack, "create", "local-draft", "-f", "Modelfile", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\nDRAFT " in corral(stack, "show", "local-draft", "--modelfile").stdout


def test_run_one_shot_and_piped(stack: Stack, terse: str) -> None:
    r = corral(stack, "run", terse, "Say hello.")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    piped = corral(stack, "run", terse, stdin="Name a colour.\n")
    assert piped.returncode == 0 and piped.stdout.strip()
    verbose = corral(stack, "run", terse, "Hi", "--verbose")
    assert "eval rate:" in verbose.stderr


def test_cp_ps_stop_rm(stack: Stack, terse: str) -> None:
    assert corral(stack, "cp", terse, "terse-copy").returncode == 0
    assert "terse-copy:latest" in corral(stack, "list").stdout
    # gemma3 loaded first with a longer context: terse-copy (FROM gemma3, num_ctx 1024) runs
    # on that instance rather than loading the weights again, and `stop terse-copy` finds it.
    load = httpx.post(f"{stack.url}/api/generate", json={"model": "gemma3", "options": {"num_ctx": 2048}}, timeout=120)
    assert load.status_code == 200, load.text
    assert corral(stack, "run", "terse-copy", "Hi").returncode == 0
    ps = corral(stack, "ps")
    assert ps.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "ACTIVE", "UNTIL"]
    assert "100% CPU" in ps.stdout
    assert " 0/1 " in ps.stdout  # ACTIVE: no sequence of its one (CORRAL_NUM_PARALLEL) in use
    [shared] = [m for m in httpx.get(f"{stack.url}/api/ps").json()["models"] if m["name"] == "gemma3:latest"]
    assert "terse-copy:latest" in shared["also_serving"] and shared["context_length"] >= 2048
    assert corral(stack, "stop", "terse-copy").returncode == 0
    deadline = time.monotonic() + 30
    while any(m["name"] == "gemma3:latest" for m in httpx.get(f"{stack.url}/api/ps").json()["models"]):
        assert time.monotonic() < deadline, "stop did not unload the instance serving terse-copy"
        time.sleep(0.2)
    r = corral(stack, "rm", "terse-copy")
    assert r.returncode == 0 and "deleted 'terse-copy'" in r.stdout
    assert "terse-copy" not in corral(stack, "list").stdout
    assert "terse:latest" in corral(stack, "list").stdout  # shared blobs survive


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "no-such-model"), "Error: model 'no-such-model' not found"),
        (("stop", "no-such-model"), 'Error: couldn\'t find model "no-such-model" to stop'),
        (("rm", "no-such-model"), "Error: model 'no-such-model' not found"),
    ],
)
def test_user_errors_are_one_line(stack: Stack, args: tuple[str, ...], message: str) -> None:
    r = corral(stack, *args)
    assert r.returncode == 1
    assert r.stderr.strip() == message
    assert "Traceback" not in r.stderr


def test_server_down_and_bad_modelfile(tmp_path: Path, stack: Stack) -> None:
    down = corral(None, "list")
    assert down.returncode == 1 and down.stderr.startswith("Error: could not connect to corral server")
    assert "Traceback" not in down.stderr
    (tmp_path / "Modelfile").write_text("FROM gemma3\nPARAMETER temperature hot\n")
    bad = corral(stack, "create", "x", "-f", str(tmp_path / "Modelfile"))
    assert bad.returncode == 1
    assert bad.stderr.strip() == "Error: (line 2): invalid float value [hot]"
    missing = corral(stack, "create", "x", "-f", str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stderr.startswith("Error: cannot read")


def test_version(stack: Stack) -> None:
    r = corral(stack, "--version")
    assert r.returncode == 0 and "corral version is" in r.stdout


def test_push_and_pull_with_progress(stack: Stack, terse: str, tmp_path: Path) -> None:
    registry = start_oci_registry(tmp_path)
    try:
        remote = f"{registry.host}/library/terse:latest"
        assert corral(stack, "cp", terse, remote).returncode == 0
        pushed = corral(stack, "push", remote, "--insecure")
        assert pushed.returncode == 0, pushed.stderr
        assert "pushing" in pushed.stderr and "success" in pushed.stderr
        assert corral(stack, "rm", remote).returncode == 0
        pulled = corral(stack, "pull", remote, "--insecure")
        assert pulled.returncode == 0, pulled.stderr
        lines = pulled.stderr.splitlines()
        assert lines[0] == "pulling manifest" and lines[-1] == "success"
        assert "verifying sha256 digest" in lines and "writing manifest" in lines
        assert remote.split("/", 1)[0] in corral(stack, "list").stdout
    finally:
        registry.stop()
