"""Incremental detokenization with stop strings.

Token pieces arrive as bytes. A piece may end inside a UTF-8 character, and
text may be the start of a stop string; both are held back until resolved, so
the caller never sees text it would have to take back. The stop string itself
is never emitted.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stop if s]
        self._held = ""  # decoded text that might begin a stop string
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Adds a token's bytes; returns the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(piece)
        if not self._stops:
            out, self._held = self._held, ""
            return out
        cut = self._first_stop()
        if cut >= 0:
            self.stopped = True
            out, self._held = self._held[:cut], ""
            return out
        keep = self._partial_stop_len()
        split = len(self._held) - keep
        out, self._held = self._held[:split], self._held[split:]
        return out

    def flush(self) -> str:
        """Everything still held (the generation ended without a stop string)."""
        if self.stopped:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out

    def _first_stop(self) -> int:
        hits = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
        return min(hits) if hits else -1

    def _partial_stop_len(self) -> int:
        """Longest suffix of the held text that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:k]):
                    best = k
                    break
        return best
