"""The candidate arrays the samplers see: the near-max subset is exactly the top k and the
tokens tied with the k-th, and a chain samples from it what it samples from the whole
vocabulary (llama.cpp's own samplers, no model)."""

from __future__ import annotations

import ctypes

import llama_cpp as lc
import numpy as np
import pytest

from services.runner.grammar import Candidates
from services.runner.sampling import SamplingParams, build_chain

N_VOCAB = 20_000


def pointer(x: np.ndarray) -> ctypes._Pointer[ctypes.c_float]:
    return x.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def ids(p: ctypes._Pointer[lc.llama_token_data_array]) -> list[int]:
    a = p.contents
    return [int(a.data[i].id) for i in range(a.size)]


def test_the_near_max_subset_is_the_top_k_and_every_token_tied_with_the_kth() -> None:
    rng = np.random.default_rng(0)
    c = Candidates(N_VOCAB)
    for scale in (0.5, 3.0, 20.0):
        x = rng.normal(0, scale, N_VOCAB).astype(np.float32)
        x[rng.choice(N_VOCAB, 60, replace=False)] = np.sort(x)[-40]  # ties with the 40th highest
        for k in (1, 2, 40):
            p = c.fill_near_max(pointer(x), k)
            assert p is not None
            got = ids(p)
            assert got == np.flatnonzero(x >= np.sort(x)[-k]).tolist()
            assert [p.contents.data[i].logit for i in range(len(got))] == x[got].tolist()
            for spread in (1.0, 5.0, 50.0):  # where it looks changes nothing
                c.spread = spread
                q = c.fill_near_max(pointer(x), k)
                assert q is None or ids(q) == got


def test_a_row_too_flat_for_the_subset_gets_none() -> None:
    c = Candidates(N_VOCAB)
    assert c.fill_near_max(pointer(np.zeros(N_VOCAB, dtype=np.float32)), 40) is None
    assert c.fill_near_max(pointer(np.full(N_VOCAB, -np.inf, dtype=np.float32)), 40) is None


def test_top_k_beyond_a_small_vocabulary_takes_all_of_it() -> None:
    c = Candidates(16)
    x = np.arange(16, dtype=np.float32)
    p = c.fill_near_max(pointer(x), 40)
    assert p is not None and ids(p) == list(range(16))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),  # Ollama's defaults: top_k 40, top_p 0.9, temperature 0.8
        SamplingParams(top_k=5, top_p=1.0, temperature=1.5),
        SamplingParams(top_k=100, min_p=0.05, temperature=0.6),
    ],
)
def test_a_top_k_chain_samples_from_the_subset_what_it_samples_from_the_whole_vocabulary(
    params: SamplingParams,
) -> None:
    rng = np.random.default_rng(1)
    whole, near = Candidates(N_VOCAB), Candidates(N_VOCAB)
    seeded = SamplingParams(**{**params.__dict__, "seed": 42})
    a, b = build_chain(seeded, None, 0), build_chain(seeded, None, 0)  # no vocabulary needed without penalties
    try:
        picks, subsets = [], 0
        for _ in range(300):
            x = rng.normal(0, rng.uniform(2.0, 3.0), N_VOCAB).astype(np.float32)  # rows alike, as a model's are
            x[rng.choice(N_VOCAB, 5, replace=False)] += rng.uniform(0, 10, 5).astype(np.float32)  # a few favourites
            tied = rng.random() < 0.2
            if tied:
                x[rng.choice(N_VOCAB, 30, replace=False)] = x.max()  # 31 tokens share the highest logit
            lc.llama_sampler_apply(a, whole.fill(pointer(x)))
            p = near.fill_near_max(pointer(x), params.top_k)
            subsets += p is not None
            lc.llama_sampler_apply(b, p if p is not None else near.fill(pointer(x)))  # as TokenSampler falls back
            w, n = whole.selected(), near.selected()
            # The same token; among tokens tied to the bit, one with the same logit (the sorts
            # order ties differently), with the same probability, and the same draw after it.
            assert w == n or (tied and x[w] == x[n] == x.max())
            picks.append((w, n))
            lc.llama_sampler_accept(a, w)
            lc.llama_sampler_accept(b, n)
        assert subsets > 250  # the subset served nearly every row
        assert len({w for w, _ in picks}) > 50  # really sampled, not one token
    finally:
        lc.llama_sampler_free(a)
        lc.llama_sampler_free(b)
