"""Hypothesis profiles for the fuzz tests. CI runs `ci`: a fixed, bounded set of examples
(derandomized, no example database) so the suite's time stays flat. For a real fuzzing
session: `HYPOTHESIS_PROFILE=long pytest tests/fuzz`."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,  # time is asserted by the tests themselves, with slack for a loaded machine
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
