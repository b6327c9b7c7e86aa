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
import numpy as np

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.native import NativeModel
from services.runner.promptcache import common_prefix

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

    def propose(self, seq_id: int, history: list[int], k: int) -> list[int]:
        """Up to k tokens the draft model expects after `history` (greedy); [] when it cannot."""
        nm, cached = self.nm, self.cached[seq_id]
        k = min(k, self.max_draft, nm.num_ctx - len(history) - 1)
        if k <= 0 or not history:
            return []
        keep = min(common_prefix(cached, history), len(history) - 1)  # the last token's logits are needed
        if keep < len(cached):
            if not nm.seq_rm(seq_id, keep):
                nm.seq_rm(seq_id)
                keep = 0
            del cached[keep:]
        out: list[int] = []
        todo = history[keep:]
        while self._eval(seq_id, todo):
            tok = self._greedy()
            out.append(tok)
            if len(out) == k or nm.is_eog(tok):
                break
            todo = [tok]
        return out

    def _eval(self, seq_id: int, tokens: list[int]) -> bool:
        """Evaluates tokens after the sequence's cached ones, in batches, logits for the last."""
        nm, cached = self.nm, self.cached[seq_id]
        for start in range(0, len(tokens), nm.n_batch):
            chunk = tokens[start : start + nm.n_batch]
            last = start + len(chunk) == len(tokens)
            for i, tok in enumerate(chunk):
                nm.batch_add(i, tok, len(cached) + i, seq_id, last and i == len(chunk) - 1)
            if nm.decode(len(chunk)) != 0:
                nm.seq_rm(seq_id)
                cached.clear()
                return False
            cached.extend(chunk)
        return True

    def _greedy(self) -> int:
        logits = lc.llama_get_logits_ith(self.nm.ctx, -1)
        return int(np.ctypeslib.as_array(logits, shape=(self.nm.n_vocab,)).argmax())

    def free(self) -> None:
        self.nm.free()
