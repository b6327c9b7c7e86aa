"""Human-readable numbers and times, as Ollama's CLI prints them."""

from __future__ import annotations

import math
from datetime import UTC, datetime

KB, MB, GB, TB = 1000, 1000**2, 1000**3, 1000**4


def human_bytes(n: float) -> str:
    """Ollama's format.HumanBytes: decimal units, no decimals from 10 up."""
    for unit, size in (("TB", TB), ("GB", GB), ("MB", MB), ("KB", KB)):
        if n >= size:
            value = n / size
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{int(n)} B"


def _duration(seconds: float) -> str:
    s = int(seconds)
    minutes, hours = s // 60, round(seconds / 3600)
    if seconds < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{hours // (24 * 365)} years"


def parse_time(text: str) -> datetime:
    # Python 3.11 parses at most microseconds: trim Go's nanoseconds.
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
        tz = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{tz}"
    return datetime.fromisoformat(text)


def human_time(when: str, now: datetime | None = None) -> str:
    """ "3 minutes ago" / "4 minutes from now" / "Forever" for an RFC 3339 time."""
    t = parse_time(when)
    now = now or datetime.now(UTC)
    delta = (t - now).total_seconds()
    if delta > 100 * 365 * 86400:
        return "Forever"
    return f"{_duration(delta)} from now" if delta > 0 else f"{_duration(-delta)} ago"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by spaces, like Go's tabwriter in Ollama's CLI."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = ["    ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines)
