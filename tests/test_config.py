from __future__ import annotations

import math
from pathlib import Path

import pytest

from corral.config import VARS, Settings, parse_host
from corral.durations import parse_go_duration, parse_keep_alive

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_every_variable_is_documented_once() -> None:
    table = DOC.read_text()
    for var in VARS:
        assert table.count(f"| `{var.name}` |") == 1, var.name
        if var.alias:
            assert f"`{var.alias}`" in table


def test_ollama_aliases_and_precedence() -> None:
    s = Settings.from_env({"OLLAMA_HOST": "0.0.0.0:8080", "OLLAMA_MODELS": "/m", "OLLAMA_KEEP_ALIVE": "-1"})
    assert (s.host, s.port, str(s.models_dir), s.keep_alive_seconds) == ("0.0.0.0", 8080, "/m", math.inf)
    s = Settings.from_env({"OLLAMA_HOST": "0.0.0.0:8080", "CORRAL_HOST": "127.0.0.1:9"})
    assert (s.host, s.port) == ("127.0.0.1", 9)
    assert Settings.from_env({"OLLAMA_KEEP_ALIVE": "600"}).keep_alive_seconds == 600


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:11434", ("127.0.0.1", 11434)),
        ("http://example.com", ("example.com", 80)),
        ("https://example.com", ("example.com", 443)),
        ("0.0.0.0", ("0.0.0.0", 11434)),
        (":5000", ("127.0.0.1", 5000)),
        ("[::1]:7000", ("::1", 7000)),
    ],
)
def test_parse_host(value: str, expected: tuple[str, int]) -> None:
    assert parse_host(value) == expected


def test_durations() -> None:
    assert parse_go_duration("1h30m") == 5400
    assert parse_go_duration("500ms") == 0.5
    assert parse_keep_alive(-1) == math.inf
    assert parse_keep_alive("-5m") == math.inf
    assert parse_keep_alive(0) == 0
    with pytest.raises(ValueError, match="missing unit"):
        parse_keep_alive("3600")
    with pytest.raises(ValueError, match="Unsupported type"):
        parse_keep_alive(True)
    with pytest.raises(ValueError, match="Unsupported type"):
        parse_keep_alive([1])
    # Longer than any Go duration is forever, not an expiry in the year 10^12.
    assert parse_keep_alive(10**20) == math.inf
    assert parse_keep_alive("99999999999h") == math.inf
    assert parse_keep_alive(9e9) == 9e9
    with pytest.raises(ValueError, match="not a number"):
        parse_keep_alive(math.nan)


def test_bad_integer_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="CORRAL_MAX_QUEUE must be an integer"):
        Settings.from_env({"CORRAL_MAX_QUEUE": "lots"})


def test_an_ipv6_advertise_address_gets_brackets() -> None:
    def advertised(value: str) -> str:
        return Settings.from_env({"CORRAL_RUNNER_ADVERTISE_ADDR": value}).runner_advertise_addr

    assert advertised("fd00::5:50063") == "[fd00::5]:50063"  # what $(POD_IP):50063 gives on IPv6
    assert advertised("[fd00::5]:50063") == "[fd00::5]:50063"
    assert advertised("10.1.2.3:50063") == "10.1.2.3:50063"
    assert advertised("runner:50063") == "runner:50063"
    assert advertised("unix:/run/corral/runner.sock") == "unix:/run/corral/runner.sock"
