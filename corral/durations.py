"""Ollama's keep_alive and duration values.

A JSON number means seconds; a string is a Go duration ("5m", "1h30m", "-1s").
Negative values mean forever (returned as math.inf), 0 means now.
"""

from __future__ import annotations

import math
import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

FOREVER = math.inf
LONGEST = (2**63 - 1) / 1e9  # Go's longest time.Duration, about 292 years, in seconds


def keep_alive_seconds(seconds: float) -> float:
    """Negative, or longer than any Go duration, is forever (a year 10^12 expiry once broke
    every later /api/ps); NaN raises ValueError."""
    if math.isnan(seconds):
        raise ValueError("keep_alive is not a number")
    return FOREVER if seconds < 0 or seconds > LONGEST else seconds


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string; raises ValueError like time.ParseDuration."""
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        if re.fullmatch(r"\d+(\.\d*)?", s):
            raise ValueError(f'time: missing unit in duration "{text}"')
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * total


def parse_keep_alive(value: object, *, env_style: bool = False) -> float:
    """Seconds to keep a model loaded; math.inf for negative (forever).

    `env_style` accepts a bare integer string as seconds, as OLLAMA_KEEP_ALIVE does.
    Raises ValueError with Ollama's messages for other types.
    """
    if isinstance(value, bool):
        raise ValueError("Unsupported type: 'bool'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = float(value) if env_style and re.fullmatch(r"[+-]?\d+", value.strip()) else parse_go_duration(value)
    else:
        raise ValueError(f"Unsupported type: '{type(value).__name__}'")
    return keep_alive_seconds(seconds)
