"""Grammar-constrained sampling with llama.cpp's rejection fast path.

Applying a grammar to every candidate costs a full pass over the vocabulary
(≈49 ms per token for Gemma's 262k tokens). Like llama.cpp's
`common_sampler_sample`, a constrained sequence samples WITHOUT the grammar,
checks only the sampled token against it, and runs the full grammar filter
followed by the chain again only when that token is rejected. Both samplers
then accept the chosen token, so the grammar's parse state stays in step.

On rejection, the grammar first filters only the SUBSET most likely tokens. When
the chain keeps at most k tokens (greedy: 1, top_k: k) and no penalty reorders
logits, k allowed tokens among them give exactly the full filter's result, since
every token outside the subset ranks below all of them. Otherwise, or with fewer
than k allowed, the whole vocabulary is filtered.
"""

from __future__ import annotations

import ctypes
import math
from collections import deque
from collections.abc import Callable
from typing import Any

import llama_cpp as lc
import numpy as np

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner import llamalog
from services.runner.constraints import Thinking, schema_to_gbnf
from services.runner.sampling import SamplingParams, greedy_token, penalised

__all__ = ["Candidates", "ThinkBudget", "TokenSampler", "exact_subset_k", "init_grammar", "schema_to_gbnf"]

SUBSET = 1024

# llama_token_data as numpy sees it: {int32 id; float logit; float p}.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(lc.llama_token_data)


def _invalid(msg: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, msg)


def init_grammar(vocab: lc.llama_vocab_p, gbnf: str) -> lc.llama_sampler_p:
    with llamalog.capture() as lines:
        g = lc.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not g:
        raise _invalid(f"invalid grammar: {grammar_error(lines)}")
    return g


def grammar_error(lines: list[tuple[int, str]]) -> str:
    """llama.cpp's parse error, without the grammar it echoes after it."""
    for _lvl, text in lines:
        for line in text.splitlines():
            if "error parsing grammar" in line or "parse:" in line or "root" in line:
                return line.split("error parsing grammar:", 1)[-1].strip().removeprefix("llama_grammar_init_impl: ")
    return "llama.cpp could not parse it"


def exact_subset_k(p: SamplingParams) -> int:
    """How many of the highest logits decide the chain's pick, so that sampling from them alone
    (and, on a grammar's rejection, k allowed tokens among the top SUBSET) is exact: 1 for
    greedy, top_k for a chain that starts with top-k; 0 = never (penalties and logit bias
    reorder the logits first)."""
    if penalised(p) or p.logit_bias:
        return 0
    if p.temperature <= 0:
        return 1
    return p.top_k if 0 < p.top_k <= SUBSET // 4 else 0


class Candidates:
    """Reusable llama_token_data_arrays (owner thread only): one over the whole vocabulary,
    allocated on first use (grammars and other full-vocabulary chains), and one of at most
    SUBSET tokens."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self._template: np.ndarray[Any, np.dtype[np.void]] | None = None
        self._buf = np.empty(0, dtype=TOKEN_DATA)
        self._data = ctypes.cast(self._buf.ctypes.data, ctypes.POINTER(lc.llama_token_data))
        self.array = lc.llama_token_data_array(self._data, 0, -1, False)
        self._sub = np.zeros(min(SUBSET, n_vocab), dtype=TOKEN_DATA)
        self._sub_data = ctypes.cast(self._sub.ctypes.data, ctypes.POINTER(lc.llama_token_data))
        self.spread = 8.0  # logits this far below the highest hold the top k (fill_near_max adapts it)
        self._one = lc.llama_token_data(0, 1.0, 0.0)
        self._single = lc.llama_token_data_array(ctypes.pointer(self._one), 1, -1, False)

    def fill(self, logits: ctypes._Pointer[ctypes.c_float]) -> ctypes._Pointer[lc.llama_token_data_array]:
        if self._template is None:
            self._template = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
            self._template["id"] = np.arange(self.n_vocab, dtype=np.int32)
            self._buf = np.empty_like(self._template)
            self._data = ctypes.cast(self._buf.ctypes.data, ctypes.POINTER(lc.llama_token_data))
        np.copyto(self._buf, self._template)
        self._buf["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        a = self.array
        a.data = self._data  # type: ignore[assignment]  # the stub says Array
        a.size, a.selected, a.sorted = self.n_vocab, -1, False
        return ctypes.pointer(a)

    def fill_near_max(
        self, logits: ctypes._Pointer[ctypes.c_float], k: int
    ) -> ctypes._Pointer[lc.llama_token_data_array] | None:
        """The tokens whose logit is at least the k-th highest: the top k and every token tied
        with the k-th, in token order (None when they cannot be found among at most SUBSET
        tokens near the highest logit). A chain that starts by keeping the top k then samples
        what it samples over the whole vocabulary (up to the order it gives tokens tied to the
        bit), without a candidate array of n_vocab entries. The set depends on the logits
        alone; `spread`, how far below the highest logit to look, only makes finding it cheap
        and follows where the k-th logit lies."""
        x = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        top = x.max()
        k = min(k, self.n_vocab)  # top_k beyond the vocabulary keeps it all
        for _ in range(6):
            idx = np.flatnonzero(x >= top - self.spread)
            n = len(idx)
            if n < k:
                self.spread *= 1.5
                continue
            if n > len(self._sub):
                self.spread *= 0.6
                continue
            if n > 4 * k:
                self.spread *= 0.95
            vals = x[idx]
            if n > k:
                keep = vals >= np.partition(vals, n - k)[n - k]
                idx, vals = idx[keep], vals[keep]
                n = len(idx)
            sub = self._sub[:n]
            sub["id"] = idx
            sub["logit"] = vals
            sub["p"] = 0.0
            a = self.array
            a.data = self._sub_data  # type: ignore[assignment]  # the stub says Array
            a.size, a.selected, a.sorted = n, -1, False
            return ctypes.pointer(a)
        return None

    def fill_top(self, logits: ctypes._Pointer[ctypes.c_float]) -> ctypes._Pointer[lc.llama_token_data_array]:
        """The SUBSET highest logits only (unsorted)."""
        x = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        n = len(self._sub)
        idx = np.argpartition(x, self.n_vocab - n)[self.n_vocab - n :] if n < self.n_vocab else np.arange(n)
        self._sub["id"] = idx
        self._sub["logit"] = x[idx]
        self._sub["p"] = 0.0
        a = self.array
        a.data = self._sub_data  # type: ignore[assignment]  # the stub says Array
        a.size, a.selected, a.sorted = n, -1, False
        return ctypes.pointer(a)

    def n_allowed(self) -> int:
        """Candidates the grammar left (it sets rejected logits to -inf, without removing them)."""
        a = self.array
        view = np.ctypeslib.as_array(ctypes.cast(a.data, ctypes.POINTER(ctypes.c_float)), shape=(a.size * 3,))
        return int(np.isfinite(view[1::3]).sum())

    def selected(self) -> int:
        a = self.array
        if a.selected < 0 or a.selected >= a.size:
            raise CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, "the sampler selected no token")
        return int(a.data[a.selected].id)

    def allowed(self, grammar: lc.llama_sampler_p, token: int) -> bool:
        one = self._one
        one.id, one.logit, one.p = token, 1.0, 0.0  # type: ignore[assignment]
        s = self._single
        s.size, s.selected, s.sorted = 1, -1, False
        lc.llama_sampler_apply(grammar, ctypes.pointer(s))
        return not math.isinf(one.logit)


_LOOKING, _THINKING, _DONE = range(3)


class ThinkBudget:
    """Counts tokens of thought; when `budget_tokens` are spent it hands out the close
    tag's tokens, so the model writes its answer next (Anthropic's budget_tokens)."""

    def __init__(self, t: Thinking, piece: Callable[[int], bytes], close_tokens: list[int]) -> None:
        self.open, self.close = t.open, t.close
        self.left = t.budget_tokens
        self.state = _THINKING if t.started else _LOOKING
        self.text = ""
        self.close_tokens = close_tokens
        self.forced: deque[int] = deque()
        self.piece = piece
        self.thought = 0  # tokens counted as thinking
        self.closed_by_budget = False

    def pop_forced(self) -> int | None:
        return self.forced.popleft() if self.forced else None

    def abandon(self) -> None:
        self.forced.clear()

    def observe(self, tok: int) -> None:
        if self.state == _DONE:
            return
        self.text += self.piece(tok).decode("utf-8", "replace")
        if self.state == _LOOKING:
            s = self.text.lstrip()
            if s.startswith(self.open):
                self.state, self.text = _THINKING, s[len(self.open) :]
            elif s and not self.open.startswith(s):
                self.state = _DONE
            return
        self.thought += 1
        self.left -= 1
        if self.close in self.text:
            self.state = _DONE
            return
        self.text = self.text[-len(self.close) :]
        # never cut a close tag the model has started writing
        partial = any(self.text.endswith(self.close[:k]) for k in range(1, len(self.close)))
        if self.left <= 0 and not partial:
            self.forced.extend(self.close_tokens)
            self.state, self.closed_by_budget = _DONE, True


def think_budget(
    t: Thinking | None, piece: Callable[[int], bytes], tokenize: Callable[[str], list[int]]
) -> ThinkBudget | None:
    if t is None or t.budget_tokens <= 0 or not t.close:
        return None
    return ThinkBudget(t, piece, tokenize(t.close))


class TokenSampler:
    """A sequence's sampler chain plus optional grammar and thinking budget; `free()` releases both samplers.

    `subset_k` (exact_subset_k) says how few of the highest logits decide the chain's pick:
    1 for plain greedy, whose token is numpy's argmax of the logits row; k for a chain that
    keeps the top k first, which then samples from the tokens near the highest logit
    (Candidates.fill_near_max). Either way the token is the one llama_sampler_sample picks
    (but for which of several tokens with bit-identical logits a draw lands on), without the
    n_vocab candidate array it fills on every call (0.18 ms a token for Gemma 3's 262k;
    argmax 0.02 ms). 0: the chain sees the whole vocabulary.
    """

    def __init__(
        self,
        chain: lc.llama_sampler_p,
        grammar: lc.llama_sampler_p | None,
        cands: Candidates,
        subset_k: int = 0,
        budget: ThinkBudget | None = None,
    ) -> None:
        self.chain = chain
        self.grammar = grammar
        self._cands = cands
        self._subset_k = subset_k
        self.budget = budget
        self.rejections = 0  # how often the fast path fell back (benchmarks read it)

    def sample(self, ctx: Any, row: int) -> int:
        if self.budget is None:
            return self._sample(ctx, row)
        forced = self.budget.pop_forced()
        if forced is not None:
            g, cands = self.grammar, self._cands
            if g is None or (cands is not None and cands.allowed(g, forced)):
                if g is not None:
                    lc.llama_sampler_accept(g, forced)
                lc.llama_sampler_accept(self.chain, forced)
                return forced
            self.budget.abandon()  # the grammar cannot take the tag here: let the model go on
        tok = self._sample(ctx, row)
        self.budget.observe(tok)
        return tok

    def _sample(self, ctx: Any, row: int) -> int:
        g, k = self.grammar, self._subset_k
        if g is None and k == 0:
            return int(lc.llama_sampler_sample(self.chain, ctx, row))  # applies and accepts in C
        logits = lc.llama_get_logits_ith(ctx, row)
        tok = self._first_pick(logits)
        if g is None:
            if k > 1:
                lc.llama_sampler_accept(self.chain, tok)  # greedy (k == 1) accepts nothing
            return tok
        cands = self._cands
        if not cands.allowed(g, tok):
            self.rejections += 1
            tok = self._resample(logits)
        lc.llama_sampler_accept(g, tok)
        lc.llama_sampler_accept(self.chain, tok)
        return tok

    def _first_pick(self, logits: ctypes._Pointer[ctypes.c_float]) -> int:
        """The chain's token over the whole vocabulary, grammar not applied."""
        cands, k = self._cands, self._subset_k
        if k == 1:
            return greedy_token(logits, cands.n_vocab)
        p = cands.fill_near_max(logits, k) if k > 1 else None
        lc.llama_sampler_apply(self.chain, p if p is not None else cands.fill(logits))
        return cands.selected()

    def _resample(self, logits: ctypes._Pointer[ctypes.c_float]) -> int:
        cands, g = self._cands, self.grammar
        assert g is not None
        if self._subset_k:
            p = cands.fill_top(logits)
            lc.llama_sampler_apply(g, p)
            if cands.n_allowed() >= self._subset_k:
                lc.llama_sampler_apply(self.chain, p)
                return cands.selected()
        p = cands.fill(logits)
        lc.llama_sampler_apply(g, p)
        lc.llama_sampler_apply(self.chain, p)
        return cands.selected()

    def free(self) -> None:
        lc.llama_sampler_free(self.chain)
        if self.grammar is not None:
            lc.llama_sampler_free(self.grammar)
            self.grammar = None
