from __future__ import annotations

from datetime import UTC, datetime

from corral_app.cli.fmt import human_bytes, human_time, parse_time, table


def test_human_bytes_like_ollama() -> None:
    assert human_bytes(253_113_024) == "253 MB"
    assert human_bytes(2_019_377_376) == "2.0 GB"
    assert human_bytes(4_661_211_808) == "4.7 GB"
    assert human_bytes(15_000_000_000) == "15 GB"
    assert human_bytes(999) == "999 B"


def test_human_time() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert human_time("2026-01-01T11:56:59.123456789Z", now) == "3 minutes ago"
    assert human_time("2026-01-01T12:04:30Z", now) == "4 minutes from now"
    assert human_time("2026-01-01T11:59:00+00:00", now) == "About a minute ago"
    assert human_time("2318-01-01T00:00:00Z", now) == "Forever"
    assert parse_time("2026-01-01T11:57:00.123456789+01:00").utcoffset() is not None


def test_table_aligns_columns() -> None:
    out = table(["NAME", "ID"], [["a:latest", "123"], ["longer:tag", "4"]]).splitlines()
    assert out[0].index("ID") == out[1].index("123") == out[2].index("4")
