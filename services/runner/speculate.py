"""Prompt-lookup (n-gram) drafting for speculative decoding, without a draft model.

A sequence's history (prompt + generated tokens) is indexed by its n-grams. When the
newest n tokens occurred before, the tokens that followed that earlier occurrence are
proposed as a draft; the batcher verifies them in one batch and keeps the prefix the
sampler agrees with. Work per token is O(1): the index is updated as tokens arrive.
"""

from __future__ import annotations

NGRAM_SIZES = (3, 2)  # longest first; a 1-gram match is mostly noise
MAX_DRAFT = 12  # tokens proposed per step at most
MIN_DRAFT = 1
MISS_PAUSE = 4  # steps without drafting after a draft of which nothing was accepted


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
    all accepted grows it, a miss shrinks it (a rejected row costs a batch row)."""

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

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        if accepted >= proposed:
            self.k = min(MAX_DRAFT, self.k * 2)
        else:
            self.k = max(MIN_DRAFT, accepted + 1)
            if accepted == 0:
                self.pause = MISS_PAUSE
