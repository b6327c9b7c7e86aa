"""Per-token log probabilities from the sampled row's raw logits.

Only the one output row of the sampled position is read (llama_get_logits_ith),
never the whole batch's logits, so a request without logprobs pays nothing and
one with logprobs pays one pass over the vocabulary. Values are the log-softmax
of the raw logits (before temperature and filters), as llama-server's
`n_probs` and therefore Ollama report them.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import llama_cpp as lc
import numpy as np

from services.runner.native import NativeModel

MAX_TOP = 20


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    bytes: bytes


@dataclass(frozen=True)
class PositionLogprobs:
    sampled: TokenLogprob
    top: tuple[TokenLogprob, ...]


def log_softmax_top(
    logits: ctypes._Pointer[ctypes.c_float], n_vocab: int, token: int, top_n: int
) -> tuple[float, list[tuple[int, float]]]:
    """The sampled token's logprob and the top_n (id, logprob) pairs, best first."""
    x = np.ctypeslib.as_array(logits, shape=(n_vocab,))
    m = float(x.max())
    lse = m + float(np.log(np.exp(x - m, dtype=np.float32).sum(dtype=np.float64)))
    top: list[tuple[int, float]] = []
    k = max(0, min(top_n, MAX_TOP, n_vocab))
    if k:
        idx = np.argpartition(x, n_vocab - k)[n_vocab - k :]
        idx = idx[np.argsort(-x[idx], kind="stable")]
        top = [(int(i), float(x[i]) - lse) for i in idx]
    return float(x[token]) - lse, top


def position_logprobs(nm: NativeModel, row: int, token: int, top_n: int) -> PositionLogprobs:
    """Logprobs of the token sampled from output row `row` of the last decode."""
    lp, top = log_softmax_top(lc.llama_get_logits_ith(nm.ctx, row), nm.n_vocab, token, top_n)

    def item(t: int, v: float) -> TokenLogprob:
        b = nm.piece(t)
        return TokenLogprob(t, b.decode("utf-8", "replace"), v, b)

    return PositionLogprobs(item(token, lp), tuple(item(t, v) for t, v in top))
