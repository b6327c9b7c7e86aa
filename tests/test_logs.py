"""Logging: format by terminal, Ollama's debug levels, per-service rotated files, request ids."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import logs


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize(
    ("value", "level"),
    [("", logging.INFO), ("0", logging.INFO), ("false", logging.INFO), ("1", logging.DEBUG),
     ("true", logging.DEBUG), ("2", logs.TRACE), ("3", logs.TRACE)],
)  # fmt: skip
def test_debug_levels_follow_ollama_debug(value: str, level: int) -> None:
    assert logs.level(value) == level


def test_text_on_a_terminal_json_otherwise_unless_told() -> None:
    assert isinstance(logs.formatter("gateway", "", Tty()), logs.TextFormatter)
    assert isinstance(logs.formatter("gateway", "", io.StringIO()), logs.JsonFormatter)
    assert isinstance(logs.formatter("gateway", "json", Tty()), logs.JsonFormatter)
    assert isinstance(logs.formatter("gateway", "text", io.StringIO()), logs.TextFormatter)
    with pytest.raises(ValueError, match="CORRAL_LOG_FORMAT"):
        logs.formatter("gateway", "xml", io.StringIO())


def test_every_line_carries_the_current_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("scheduler", env={"CORRAL_LOG_FORMAT": "json"})
    log = logging.getLogger("t")
    token = logs.REQUEST_ID.set("req-42")
    try:
        log.info("placing model", extra=logs.fields(model="gemma3"))
    finally:
        logs.REQUEST_ID.reset(token)
    log.info("no request")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["request_id"] == "req-42" and first["model"] == "gemma3" and first["service"] == "scheduler"
    assert "request_id" not in second


def test_text_lines_are_readable(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("runner", env={"CORRAL_LOG_FORMAT": "text", "CORRAL_DEBUG": "1"})
    token = logs.REQUEST_ID.set("abc")
    try:
        logging.getLogger("services.runner").debug("loaded", extra=logs.fields(ms=650))
    finally:
        logs.REQUEST_ID.reset(token)
    line = capsys.readouterr().err.strip()
    assert line.endswith("DEBUG runner services.runner: loaded ms=650 request_id=abc")


def test_log_file_per_service_rotates_by_size(tmp_path: Path) -> None:
    assert logs.service_log_path(str(tmp_path / "corral.log"), "gateway") == tmp_path / "corral-gateway.log"
    assert logs.service_log_path(str(tmp_path / "{service}" / "x.log"), "runner") == tmp_path / "runner" / "x.log"
    env = {"CORRAL_LOG_FILE": str(tmp_path / "logs" / "corral.log"), "CORRAL_LOG_MAX_BYTES": "2000",
           "CORRAL_LOG_BACKUPS": "2", "CORRAL_LOG_FORMAT": "json"}  # fmt: skip
    logs.setup("registry", env=env)
    for i in range(200):
        logging.getLogger("t").warning("line %d %s", i, "x" * 40)
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["corral-registry.log", "corral-registry.log.1", "corral-registry.log.2"]
    newest = (tmp_path / "logs" / "corral-registry.log").read_text().splitlines()
    assert json.loads(newest[-1])["msg"].startswith("line 199 ")
    assert all((tmp_path / "logs" / f).stat().st_size <= 2000 + 200 for f in files)
