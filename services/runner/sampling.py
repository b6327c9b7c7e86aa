"""Sampling options with Ollama's defaults, and the llama.cpp sampler chain they build."""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as lc
import numpy as np

from corral.options import field_kind
from corral.v1 import common_pb2


@dataclass(frozen=True)
class SamplingParams:
    """Per-request options; the defaults equal Ollama's `DefaultOptions()`."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1  # negative = random
    num_predict: int = -1  # negative = until stop (bounded by the engine)
    stop: tuple[str, ...] = field(default_factory=tuple)
    num_keep: int = 4
    # Prompt-lookup drafting (Corral's own option). None = on where it keeps greedy text exact
    # (batch-invariant kernels); elsewhere a draft verified in one batch can round differently
    # from one-token decodes (docs/runner.md, Batch invariance).
    speculative: bool | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)

    @classmethod
    def from_proto(cls, opts: common_pb2.SamplingOptions) -> SamplingParams:
        """Every field set in `opts` overrides its default (the fields are corral.options.SAMPLING)."""
        given: dict[str, Any] = {}
        for f in opts.DESCRIPTOR.fields:
            kind = field_kind(f)
            if kind == "list":
                given[f.name] = tuple(getattr(opts, f.name))
            elif kind == "map":
                given[f.name] = tuple(sorted(getattr(opts, f.name).items()))
            elif opts.HasField(f.name):
                given[f.name] = getattr(opts, f.name)
        return cls(**given)


def greedy_token(logits: ctypes._Pointer[ctypes.c_float], n_vocab: int) -> int:
    """The first highest logit's token, as llama.cpp's greedy sampler picks it."""
    return int(np.ctypeslib.as_array(logits, shape=(n_vocab,)).argmax())


def penalised(p: SamplingParams) -> bool:
    """Whether past tokens change the logits (the chain then remembers what it accepts)."""
    return p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def build_chain(params: SamplingParams, vocab: lc.llama_vocab_p, n_ctx_seq: int) -> lc.llama_sampler_p:
    """A sampler chain for one sequence; the caller frees it with llama_sampler_free.

    Order follows llama-server: logit bias, penalties, top-k, typical, top-p, min-p,
    temperature, then the random draw (or greedy at temperature <= 0). A grammar
    is kept outside the chain (grammar.TokenSampler) for the rejection fast path.
    """
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lambda s: lc.llama_sampler_chain_add(chain, s)  # noqa: E731
    if params.logit_bias:
        n = len(params.logit_bias)
        biases = (lc.llama_logit_bias * n)(*(lc.llama_logit_bias(t, b) for t, b in params.logit_bias))
        add(lc.llama_sampler_init_logit_bias(lc.llama_vocab_n_tokens(vocab), n, biases))  # copies the array
    last_n = n_ctx_seq if params.repeat_last_n < 0 else params.repeat_last_n
    if penalised(params) and last_n > 0:
        add(
            lc.llama_sampler_init_penalties(
                lc.llama_vocab_n_tokens(vocab),
                last_n,
                params.repeat_penalty,
                params.frequency_penalty,
                params.presence_penalty,
            )
        )
    if params.temperature <= 0:
        add(lc.llama_sampler_init_greedy())
        return chain
    if params.top_k > 0:
        add(lc.llama_sampler_init_top_k(params.top_k))
    if 0 < params.typical_p < 1:
        add(lc.llama_sampler_init_typical(params.typical_p, 1))
    if 0 < params.top_p < 1:
        add(lc.llama_sampler_init_top_p(params.top_p, 1))
    if params.min_p > 0:
        add(lc.llama_sampler_init_min_p(params.min_p, 1))
    add(lc.llama_sampler_init_temp(params.temperature))
    seed = params.seed if params.seed >= 0 else random.getrandbits(32)
    add(lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain
