"""Prompt-lookup (n-gram) drafting for speculative decoding, without a draft model.

A sequence's history (prompt + generated tokens) is indexed by its n-grams. When the
newest n tokens occurred before, the tokens that followed that earlier occurrence are
proposed as a draft; the batcher verifies them in one batch and keeps the prefix the
sampler agrees with. Work per token is O(1): the index is updated as tokens arrive.
"""

from __future__ import annotations

# Longest first. A match of 3 tokens or fewer is mostly chance: in an edit workload (Gemma 3
# 270M, bench/speculative.py's tasks) it proposed drafts of which nothing was accepted, and
# on free text it cost more rows than it saved. bench/draft_policy.py (recorded greedy
# answers replayed with measured step costs), edits of 200 tokens: (3, 2) 1.47x, (4,) 1.74x,
# (8, 6, 4) 1.98x; free text, first 60 tokens: 0.97x against 1.02x (docs/performance.md).
NGRAM_SIZES = (8, 6, 4)
MAX_DRAFT = 16  # tokens proposed per step at most
MIN_DRAFT = 1
MISS_PAUSE = 1  # steps without drafting after a draft of which nothing was accepted


class NgramIndex:
    """The most recent follower position of every n-gram of a token history."""

    def __init__(self, sizes: tuple[int, ...] = NGRAM_SIZES) -> None:
        self.sizes = sizes
        self.history: list[int] = []
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after it

    def extend(self, tokens: list[int]) -> None:
        hist, last = self.history, self._last
        for tok in tokens:
            i = len(hist)
            for n in self.sizes:
                if i >= n:
                    last[tuple(hist[i - n : i])] = i
            hist.append(tok)

    def draft(self, k: int) -> list[int]:
        """Up to k tokens that followed the newest earlier occurrence of the longest
        matching suffix n-gram; [] without a match."""
        hist = self.history
        if k <= 0:
            return []
        for n in self.sizes:
            if len(hist) <= n:
                continue
            at = self._last.get(tuple(hist[-n:]))
            if at is not None:
                return hist[at : at + k]
        return []


class DraftLength:
    """Adapts a sequence's draft length to how many drafted tokens were accepted:
    all accepted grows it, a miss shrinks it (a rejected row costs a batch row), and a
    length too short to be worth its rows (StepCosts) grows by one."""

    def __init__(self, start: int = 4) -> None:
        self.k = start
        self.pause = 0
        self.proposed = 0
        self.accepted = 0

    def next_k(self) -> int:
        """Draft length for this step; 0 while paused after a miss."""
        if self.pause > 0:
            self.pause -= 1
            return 0
        return self.k

    def worth(self, costs: StepCosts, rows: int, k: int) -> int:
        """How much of a k-token draft is worth its rows in a step of `rows` output rows,
        given the share of this sequence's drafted tokens accepted so far."""
        if k <= 0:
            return 0
        best = costs.best_extra(rows, k, (self.accepted + 1) / (self.proposed + 2))
        if best == 0:
            self.too_short()
        return best

    def too_short(self) -> None:
        """This step drafted nothing: k tokens were not worth their rows. One more next time,
        not twice as many: after a miss that is a probe, not a run of accepted tokens."""
        self.k = min(MAX_DRAFT, self.k + 1)

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        if accepted >= proposed:
            self.k = min(MAX_DRAFT, self.k * 2)
        else:
            self.k = max(MIN_DRAFT, accepted + 1)
            if accepted == 0:
                self.pause = MISS_PAUSE


class StepCosts:
    """What a decode step costs by its number of rows, every one an output (generation and
    verification), learned from the steps themselves (an EMA per size), so that a draft is
    cut to the length that yields the most tokens per second. Cost is not proportional to
    rows: CPU matmul kernels take the batch in tiles, so a few rows more can cost less than
    a row or two fewer (Gemma 3 270M on 2 AVX-512 cores: 2 rows cost 2.2 single-row steps,
    4 rows 3.1, 13 rows 6.4, 16 rows 5.9); on a GPU extra rows are nearly free. A size not
    seen yet is taken to cost what the largest smaller seen size does: optimistic, so it is
    tried and then known."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.seconds: dict[int, float] = {}

    def observe(self, rows: int, seconds: float) -> None:
        old = self.seconds.get(rows)
        self.seconds[rows] = seconds if old is None else old + self.alpha * (seconds - old)

    def best_extra(self, rows: int, k_max: int, accept_rate: float = 1.0) -> int:
        """How many of k_max drafted tokens to verify in a step of `rows` output rows: the k
        with the most expected tokens, rows + accept_rate * k, per second; k_max while
        nothing is known."""
        if k_max <= 0:
            return 0
        seen = [n for n in self.seconds if n <= rows]
        if not seen:
            return k_max
        cost = self.seconds[max(seen)]
        best, best_rate = 0, rows / cost
        for k in range(1, k_max + 1):
            cost = self.seconds.get(rows + k, cost)
            rate = (rows + accept_rate * k) / cost
            if rate > best_rate:
                best, best_rate = k, rate
        return best
