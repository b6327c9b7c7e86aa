"""Whether an idle instance's first step waits for the rest of a burst of requests.

Several clients at once reach the runner one after another: the gateway prepares them in
turn, and 8 simultaneous short requests arrived over about 10 ms, with gaps of up to 5 ms
(docs/performance.md). Stepping the first one alone made the other seven wait for that step
(30-55 ms) before their own. So once a burst has been seen, the first step of an idle
instance waits until no request has arrived for QUIET_S, at most MAX_HOLD_S. A first step
that then gathers nothing more, with nothing arriving during it either, stops the holding:
a lone interactive request pays the wait at most once after a burst.
"""

from __future__ import annotations

from dataclasses import dataclass

QUIET_S = 0.006
MAX_HOLD_S = 0.015


@dataclass
class BurstHold:
    expect_burst: bool = False

    def deadline(self, first_arrival: float, last_arrival: float) -> float:
        """When an idle instance's first step should start at the latest."""
        if not self.expect_burst:
            return first_arrival
        return min(first_arrival + MAX_HOLD_S, last_arrival + QUIET_S)

    def first_step_done(self, started_with: int, arrived_during: int) -> None:
        """After an idle instance's first step: it started with `started_with` requests and
        `arrived_during` more came while it ran."""
        self.expect_burst = started_with > 1 or arrived_during > 0
