"""BurstHold: when an idle instance's first step waits for the rest of a burst (pure)."""

from __future__ import annotations

import pytest

from services.runner.burst import MAX_HOLD_S, QUIET_S, BurstHold


def test_no_wait_until_a_burst_has_been_seen() -> None:
    hold = BurstHold()
    assert hold.deadline(10.0, 10.0) == 10.0  # a lone request is stepped at once


def test_after_a_burst_wait_for_a_quiet_gap_bounded_by_the_longest_hold() -> None:
    hold = BurstHold()
    hold.first_step_done(started_with=1, arrived_during=7)  # seven came while the first ran alone
    assert hold.expect_burst
    assert hold.deadline(10.0, 10.0) == pytest.approx(10.0 + QUIET_S)
    assert hold.deadline(10.0, 10.004) == pytest.approx(10.004 + QUIET_S)  # each arrival extends it
    assert hold.deadline(10.0, 10.013) == pytest.approx(10.0 + MAX_HOLD_S)  # but never past the bound


def test_a_step_that_gathered_several_keeps_holding_and_a_lone_one_stops_it() -> None:
    hold = BurstHold(expect_burst=True)
    hold.first_step_done(started_with=8, arrived_during=0)
    assert hold.expect_burst
    hold.first_step_done(started_with=1, arrived_during=0)  # interactive use again: no more waiting
    assert not hold.expect_burst
    assert hold.deadline(5.0, 5.0) == 5.0
