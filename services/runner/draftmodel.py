"""Draft-model speculative decoding: a second, smaller model with the same vocabulary proposes
a sequence's next tokens, and the batcher verifies them with the model itself exactly as it
verifies prompt-lookup drafts, so the output is the one plain decoding gives.

The draft model lives on the instance's owner thread, like the model. Draft sequence i
shadows the instance's sequence i: its KV holds a prefix of that sequence's history and is
brought up to date when the sequence next asks for a draft (the tokens the model accepted
were mostly drafted here, so they are already evaluated).
"""

from __future__ import annotations

import llama_cpp as lc

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.native import NativeModel
from services.runner.promptcache import common_prefix
from services.runner.sampling import greedy_token

VOCAB_CHECKED = 512  # leading token pieces compared between the two vocabularies


def check_vocab(model: NativeModel, draft: NativeModel) -> None:
    """The draft's token ids must mean what the model's do (llama-server's compatibility test:
    same size, same special tokens, same pieces)."""
    why = ""
    if draft.n_vocab != model.n_vocab:
        why = f"{draft.n_vocab} tokens against the model's {model.n_vocab}"
    elif any(f(draft.vocab) != f(model.vocab) for f in (lc.llama_vocab_bos, lc.llama_vocab_eos)):
        why = "different begin or end tokens"
    elif any(draft.piece(t) != model.piece(t) for t in range(min(VOCAB_CHECKED, model.n_vocab))):
        why = "different token pieces"
    if why:
        raise CorralError(common_pb2.ERROR_REASON_LOAD_FAILED, f"the draft model's vocabulary differs: {why}")


class DraftModel:
    def __init__(self, nm: NativeModel, max_draft: int) -> None:
        self.nm = nm
        self.max_draft = max_draft
        self.cached: list[list[int]] = [[] for _ in range(nm.num_parallel)]
        self.shared_decodes = 0  # decodes that drafted for more than one sequence

    def propose_many(self, wanted: dict[int, tuple[list[int], int]]) -> dict[int, list[int]]:
        """Up to k tokens (greedy) the draft model expects after each sequence's history
        (seq_id: (history, k)); none for a sequence it cannot draft for. The catch-ups go in
        one batch, then each round of drafted tokens, one row per sequence still drafting."""
        nm = self.nm
        limit: dict[int, int] = {}
        todo: dict[int, list[int]] = {}
        for seq_id, (history, k) in wanted.items():
            k = min(k, self.max_draft, nm.num_ctx - len(history) - 1)
            if k > 0 and history:
                limit[seq_id] = k
                todo[seq_id] = self._rewind(seq_id, history)
        out: dict[int, list[int]] = {seq_id: [] for seq_id in todo}
        while todo:
            picked = self._next(todo)
            todo = {}
            for seq_id, tok in picked.items():
                out[seq_id].append(tok)
                if len(out[seq_id]) < limit[seq_id] and not nm.is_eog(tok):
                    todo[seq_id] = [tok]
        return out

    def _rewind(self, seq_id: int, history: list[int]) -> list[int]:
        """Drops the draft KV past what `history` shares with it; returns the tokens to evaluate."""
        nm, cached = self.nm, self.cached[seq_id]
        keep = min(common_prefix(cached, history), len(history) - 1)  # the last token's logits are needed
        if keep < len(cached):
            if not nm.seq_rm(seq_id, keep):
                nm.seq_rm(seq_id)
                keep = 0
            del cached[keep:]
        return history[keep:]

    def _next(self, todo: dict[int, list[int]]) -> dict[int, int]:
        """Evaluates each sequence's tokens after its cached ones; the greedy next token of each
        that succeeded. One batch when they fit, else sequence by sequence in batch-sized chunks."""
        n_batch = self.nm.n_batch
        if sum(len(tokens) for tokens in todo.values()) <= n_batch:
            return self._decode(todo)
        picked: dict[int, int] = {}
        for seq_id, tokens in todo.items():
            got: dict[int, int] = {}
            for start in range(0, len(tokens), n_batch):
                got = self._decode({seq_id: tokens[start : start + n_batch]})
                if not got:
                    break
            picked.update(got)
        return picked

    def _decode(self, todo: dict[int, list[int]]) -> dict[int, int]:
        """One decode of every sequence's tokens (together at most n_batch); the greedy token
        after each sequence's last. On failure the sequences' draft KV is dropped: {}."""
        nm = self.nm
        rows: dict[int, int] = {}
        n = 0
        for seq_id, tokens in todo.items():
            start = len(self.cached[seq_id])
            for i, tok in enumerate(tokens):
                nm.batch_add(n, tok, start + i, seq_id, i == len(tokens) - 1)
                n += 1
            rows[seq_id] = n - 1
        if nm.decode(n) != 0:
            for seq_id in todo:
                nm.seq_rm(seq_id)
                self.cached[seq_id].clear()
            return {}
        for seq_id, tokens in todo.items():
            self.cached[seq_id].extend(tokens)
        self.shared_decodes += len(todo) > 1
        return {seq_id: self._greedy(row) for seq_id, row in rows.items()}

    def _greedy(self, row: int) -> int:
        """The most likely token at batch row `row` of the last decode."""
        return greedy_token(lc.llama_get_logits_ith(self.nm.ctx, row), self.nm.n_vocab)

    def free(self) -> None:
        self.nm.free()
