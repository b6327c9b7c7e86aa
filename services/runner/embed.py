"""Basic pooled embeddings, one input at a time, on the owner thread.

Only for embedding models (GGUF `<arch>.pooling_type` present; the context is
created with embeddings on). Batching several inputs as separate sequences is
a later improvement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import llama_cpp as lc

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.batcher import PROMPT_TOO_LONG
from services.runner.native import NativeModel


@dataclass(frozen=True)
class EmbedInput:
    text: str = ""
    tokens: tuple[int, ...] = ()


def embed(nm: NativeModel, inputs: list[EmbedInput], truncate: bool, normalize: bool) -> tuple[list[list[float]], int]:
    """Vectors in input order and the number of tokens evaluated."""
    if not nm.is_embedding:
        raise CorralError(common_pb2.ERROR_REASON_UNSUPPORTED, "this model does not support embeddings")
    assert nm.model is not None
    n_embd = lc.llama_model_n_embd_out(nm.model) or lc.llama_model_n_embd(nm.model)
    limit = min(nm.n_batch, nm.num_ctx)  # non-causal models need the input in one ubatch
    encoder_only = lc.llama_model_has_encoder(nm.model) and not lc.llama_model_has_decoder(nm.model)
    vectors: list[list[float]] = []
    total = 0
    for item in inputs:
        toks = list(item.tokens) if item.tokens else nm.tokenize(item.text, True, False)
        if not toks:
            raise CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "cannot embed an empty input")
        if len(toks) > limit:
            if not truncate:
                raise CorralError(common_pb2.ERROR_REASON_PROMPT_TOO_LONG, PROMPT_TOO_LONG)
            toks = toks[:limit]
        if nm.mem:
            lc.llama_memory_clear(nm.mem, True)
        for i, t in enumerate(toks):
            nm.batch_add(i, t, i, 0, True)
        assert nm.batch is not None
        nm.batch.n_tokens = len(toks)
        rc = lc.llama_encode(nm.ctx, nm.batch) if encoder_only else lc.llama_decode(nm.ctx, nm.batch)
        if rc != 0:
            raise CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, f"embedding failed ({rc})")
        ptr = lc.llama_get_embeddings_seq(nm.ctx, 0)
        if not ptr:  # no pooling: use the last token's vector
            ptr = lc.llama_get_embeddings_ith(nm.ctx, len(toks) - 1)
        if not ptr:
            raise CorralError(common_pb2.ERROR_REASON_UNSUPPORTED, "the model produced no embeddings")
        vec = [float(ptr[i]) for i in range(n_embd)]
        if normalize:
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            vec = [v / norm for v in vec]
        vectors.append(vec)
        total += len(toks)
    return vectors, total
