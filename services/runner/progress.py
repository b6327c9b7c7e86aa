"""An instance's load progress as GetStatus reports it: fetching blobs, then llama.cpp's load.

The scheduler aborts a load whose progress stops growing for CORRAL_LOAD_TIMEOUT, so the
value must grow during every phase and never go back. Without a fetch it is llama.cpp's
fraction, as before. With one, the fetch fills [0, FETCH_SHARE) (each fetched blob an
equal slice, in fetch order, since sizes are only known once each stream starts) and
llama.cpp's fraction fills the rest.
"""

from __future__ import annotations

FETCH_SHARE = 0.5


class LoadProgress:
    """Written by the event loop (fetch) and then the owner thread (load); never both at once."""

    def __init__(self) -> None:
        self.value = 0.0
        self._fetches = 0
        self._loaded_from = 0.0  # where llama.cpp's fraction starts

    def fetching(self, count: int) -> None:
        """`count` blobs will be fetched before the load starts."""
        self._fetches = count
        self._loaded_from = FETCH_SHARE if count else 0.0

    def fetched(self, index: int, done: int, total: int) -> None:
        """Blob `index` (0-based, of `count`) has `done` of its `total` bytes."""
        if self._fetches <= 0:
            return
        part = min(done / total, 1.0) if total > 0 else 1.0
        self._advance(FETCH_SHARE * (min(index, self._fetches - 1) + part) / self._fetches)

    def loaded(self, fraction: float) -> None:
        """llama.cpp's progress callback: the fraction of the weights loaded."""
        self._advance(self._loaded_from + (1.0 - self._loaded_from) * fraction)

    def _advance(self, value: float) -> None:
        self.value = max(self.value, min(value, 1.0))
