"""Host-memory prompt cache: KV snapshots of recently used token prefixes.

Like llama-server's `--cache-ram`: a sequence's KV (`llama_state_seq_get_data`) is kept
in RAM when its slot is about to be reused for another prompt, and restored
(`llama_state_seq_set_data`) when a later request starts with the same tokens. One cache
serves all of a runner's instances within one byte budget; entries are keyed by the
instance's load identity (a fresh id per llama.cpp load), so a snapshot can never be
restored into another model or a reloaded one, and an unload drops its entries.

Pure Python: the owner threads of several instances share it, hence the lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

MIN_PREFIX = 32  # a shorter match is not worth a restore


@dataclass(frozen=True)
class Entry:
    tokens: tuple[int, ...]  # the tokens whose KV `data` holds, from position 0
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data) + 8 * len(self.tokens)


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    # Histories that share a prefix mostly part near their ends (a rejected draft, a new
    # turn): compare the head at C speed (list(): a tuple and a list never compare equal)
    # and walk only the tail. The batcher calls this every step for a drafting sequence.
    start = max(0, n - 64)
    if list(a[:start]) != list(b[:start]):
        start = 0
    for i in range(start, n):
        if a[i] != b[i]:
            return i
    return n


class PromptCache:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = max(0, budget_bytes)
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], Entry] = OrderedDict()  # LRU first
        self.used = 0
        self.hits = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, owner: str, tokens: list[int], data: bytes, prefixes_serve: bool = True) -> bool:
        """Stores a snapshot, evicting the least recently used; False if it cannot fit.

        `prefixes_serve`: a snapshot also serves any prefix of its tokens (no sliding
        window), so one that another entry extends adds nothing, and a new one replaces the
        entries it extends. With a sliding window only identical token lists replace."""
        entry = Entry(tuple(tokens), data)
        if not tokens or entry.size > self.budget:
            return False
        with self._lock:
            old_same = self._entries.get((owner, entry.tokens))
            if old_same is not None:
                self._drop((owner, entry.tokens), old_same)
            for (o, toks), old in list(self._entries.items()):
                if o != owner or not prefixes_serve:
                    continue
                if len(toks) >= len(tokens) and toks[: len(tokens)] == entry.tokens:
                    self._entries.move_to_end((o, toks))
                    return True  # an entry already covers it
                if len(toks) < len(tokens) and entry.tokens[: len(toks)] == toks:
                    self._drop((o, toks), old)  # the new one covers the old one
            while self.used + entry.size > self.budget and self._entries:
                key, old = next(iter(self._entries.items()))
                self._drop(key, old)
            self._entries[(owner, entry.tokens)] = entry
            self.used += entry.size
            return True

    def lookup(self, owner: str, tokens: list[int], at_least: int = MIN_PREFIX) -> tuple[Entry, int] | None:
        """The owner's entry sharing the longest prefix with `tokens` (> at_least tokens)
        and that length; the entry becomes the most recently used."""
        best: tuple[Entry, int] | None = None
        with self._lock:
            for (o, _toks), entry in self._entries.items():
                if o == owner:
                    n = common_prefix(entry.tokens, tokens)
                    if n > at_least and (best is None or n > best[1]):
                        best = (entry, n)
            if best is not None:
                self._entries.move_to_end((owner, best[0].tokens))
                self.hits += 1
        return best

    def drop_owner(self, owner: str) -> None:
        with self._lock:
            for key, entry in list(self._entries.items()):
                if key[0] == owner:
                    self._drop(key, entry)

    def _drop(self, key: tuple[str, tuple[int, ...]], entry: Entry) -> None:
        del self._entries[key]
        self.used -= entry.size
