"""Sampling options with Ollama's defaults, and the llama.cpp sampler chain they build."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import llama_cpp as lc

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
    # Prompt-lookup drafting (Corral's own option). Off by default: a draft verified in one batch
    # rounds differently from one-token decodes on CPU, so greedy text can differ (docs/runner.md).
    speculative: bool = False

    @classmethod
    def from_proto(cls, opts: common_pb2.SamplingOptions) -> SamplingParams:
        d = cls()

        def pick(name: str, default: float | int) -> float | int:
            return getattr(opts, name) if opts.HasField(name) else default  # type: ignore[arg-type]

        return cls(
            temperature=float(pick("temperature", d.temperature)),
            top_k=int(pick("top_k", d.top_k)),
            top_p=float(pick("top_p", d.top_p)),
            min_p=float(pick("min_p", d.min_p)),
            typical_p=float(pick("typical_p", d.typical_p)),
            repeat_penalty=float(pick("repeat_penalty", d.repeat_penalty)),
            repeat_last_n=int(pick("repeat_last_n", d.repeat_last_n)),
            presence_penalty=float(pick("presence_penalty", d.presence_penalty)),
            frequency_penalty=float(pick("frequency_penalty", d.frequency_penalty)),
            seed=int(pick("seed", d.seed)),
            num_predict=int(pick("num_predict", d.num_predict)),
            stop=tuple(opts.stop),
            num_keep=int(pick("num_keep", d.num_keep)),
            speculative=bool(opts.speculative) if opts.HasField("speculative") else d.speculative,
        )


def build_chain(params: SamplingParams, vocab: lc.llama_vocab_p, n_ctx_seq: int) -> lc.llama_sampler_p:
    """A sampler chain for one sequence; the caller frees it with llama_sampler_free.

    Order follows llama-server: penalties, top-k, typical, top-p, min-p,
    temperature, then the random draw (or greedy at temperature <= 0). A grammar
    is kept outside the chain (grammar.TokenSampler) for the rejection fast path.
    """
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    add = lambda s: lc.llama_sampler_chain_add(chain, s)  # noqa: E731
    last_n = n_ctx_seq if params.repeat_last_n < 0 else params.repeat_last_n
    penalised = params.repeat_penalty != 1.0 or params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
    if penalised and last_n > 0:
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
