"""Batched pooled embeddings, on the instance's owner thread.

Many inputs go into one llama_decode as separate sequences (up to the batch's
token and sequence limits), and every sequence's pooled vector is read back.
An embedding model (GGUF `<arch>.pooling_type`) uses its own context and its
own pooling (mean / cls / last). A generative model gets a second context with
embeddings on and mean pooling, created on first use, so generation and
embedding never share a context or a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp as lc
import numpy as np

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.native import EMBED_MAX_SEQS, NativeModel

INPUT_TOO_LONG = "the input length exceeds the context length"
GENERATIVE_EMBED_BATCH = 512  # tokens per batch = longest input; logits cost n_vocab floats per token


@dataclass(frozen=True)
class EmbedInput:
    text: str = ""
    tokens: tuple[int, ...] = ()


def _err(reason: int, msg: str) -> CorralError:
    return CorralError(reason, msg)


class Embedder:
    def __init__(self, nm: NativeModel) -> None:
        assert nm.model is not None
        self.nm = nm
        self.n_embd = lc.llama_model_n_embd_out(nm.model) or lc.llama_model_n_embd(nm.model)
        self._own: lc.llama_context_p | None = None
        if nm.is_embedding:
            self.ctx, self.n_batch, self.n_seq = nm.ctx, nm.n_batch, nm.n_seq_max
            # Rank pooling returns the classifier's n_cls_out scores per sequence, not a vector.
            self.is_rank = lc.llama_pooling_type(self.ctx) == lc.LLAMA_POOLING_TYPE_RANK
            if self.is_rank:
                self.n_embd = max(1, lc.llama_model_n_cls_out(nm.model))
        else:
            self.n_batch = min(nm.num_ctx, GENERATIVE_EMBED_BATCH)
            self.n_seq = EMBED_MAX_SEQS
            cp = nm.context_params(self.n_batch, self.n_seq, self.n_batch, embeddings=True)
            cp.pooling_type = lc.LLAMA_POOLING_TYPE_MEAN
            ctx = lc.llama_init_from_model(nm.model, cp)
            if not ctx:
                raise _err(common_pb2.ERROR_REASON_RUNNER_FAILED, "llama.cpp could not create the embedding context")
            self._own = self.ctx = ctx
            nm.apply_adapters(ctx)
            self.is_rank = False
        self.mem = lc.llama_get_memory(self.ctx)
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self.encoder_only = bool(lc.llama_model_has_encoder(nm.model)) and not lc.llama_model_has_decoder(nm.model)
        self.limit = min(self.n_batch, nm.num_ctx)  # a sequence must fit one ubatch
        specials = nm.tokenize("", True, False)
        n_bos = 1 if lc.llama_vocab_get_add_bos(nm.vocab) and specials else 0
        self._prefix, self._suffix = specials[:n_bos], specials[n_bos:]

    def free(self) -> None:
        lc.llama_batch_free(self.batch)
        if self._own:
            lc.llama_free(self._own)
            self._own = None

    def tokens(self, item: EmbedInput, truncate: bool, num_ctx: int = 0) -> list[int]:
        nm = self.nm
        limit = min(self.limit, num_ctx) if num_ctx > 0 else self.limit
        if item.tokens:
            toks = list(item.tokens)
            if any(t < 0 or t >= nm.n_vocab for t in toks):
                raise _err(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "token id out of range")
        else:
            toks = nm.tokenize(item.text, True, False)
        if not toks:
            raise _err(common_pb2.ERROR_REASON_INVALID_ARGUMENT, "cannot embed an empty input")
        if len(toks) <= limit:
            return toks
        if not truncate:
            raise _err(common_pb2.ERROR_REASON_PROMPT_TOO_LONG, INPUT_TOO_LONG)
        if item.tokens:
            return toks[:limit]
        # Cut the text's own tokens and keep the model's BOS/CLS and EOS/SEP around them.
        body = nm.tokenize(item.text, False, False)[: limit - len(self._prefix) - len(self._suffix)]
        return self._prefix + body + self._suffix

    def run(
        self, inputs: list[EmbedInput], truncate: bool, normalize: bool, num_ctx: int = 0
    ) -> tuple[list[list[float]], int]:
        """Vectors in input order and the number of tokens evaluated."""
        if self.is_rank:
            raise _err(
                common_pb2.ERROR_REASON_INVALID_ARGUMENT,
                "this model is a reranker (rank pooling) and does not produce embeddings; use /api/rerank",
            )
        all_toks = [self.tokens(item, truncate, num_ctx) for item in inputs]
        vectors = self.pooled(all_toks)
        if normalize:
            vectors = [v / (float(np.linalg.norm(v)) or 1.0) for v in vectors]
        for v in vectors:
            if not np.isfinite(v).all():
                raise _err(common_pb2.ERROR_REASON_RUNNER_FAILED, "embedding contains NaN or Inf values")
        return [v.tolist() for v in vectors], sum(len(t) for t in all_toks)

    def pooled(self, all_toks: list[list[int]]) -> list[np.ndarray]:
        """The pooled output of each token sequence (each at most `limit` tokens), batched."""
        vectors: list[np.ndarray] = []
        i = 0
        while i < len(all_toks):
            group: list[list[int]] = []
            used = 0
            while i < len(all_toks) and len(group) < self.n_seq and used + len(all_toks[i]) <= self.n_batch:
                group.append(all_toks[i])
                used += len(all_toks[i])
                i += 1
            vectors.extend(self._forward(group))
        return vectors

    def _forward(self, group: list[list[int]]) -> list[np.ndarray]:
        b = self.batch
        if self.mem:
            lc.llama_memory_clear(self.mem, True)
        n = 0
        last_rows = []
        for seq, toks in enumerate(group):
            for pos, t in enumerate(toks):
                b.token[n] = t
                b.pos[n] = pos  # type: ignore[call-overload]  # the binding's stub says 2-D
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                b.logits[n] = 1
                n += 1
            last_rows.append(n - 1)
        b.n_tokens = n
        rc = lc.llama_encode(self.ctx, b) if self.encoder_only else lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise _err(common_pb2.ERROR_REASON_RUNNER_FAILED, f"embedding failed ({rc})")
        out = []
        for seq, row in enumerate(last_rows):
            ptr = lc.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:  # pooling none: the last token's vector
                ptr = lc.llama_get_embeddings_ith(self.ctx, row)
            if not ptr:
                raise _err(common_pb2.ERROR_REASON_UNSUPPORTED, "the model produced no embeddings")
            out.append(np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float32))
        return out


def embedder(nm: NativeModel) -> Embedder:
    """The instance's Embedder, created on first use (on the owner thread)."""
    if nm.embedder is None:
        nm.embedder = Embedder(nm)
    assert isinstance(nm.embedder, Embedder)
    return nm.embedder


def embed(
    nm: NativeModel, inputs: list[EmbedInput], truncate: bool, normalize: bool, num_ctx: int = 0
) -> tuple[list[list[float]], int]:
    """Runs on the owner thread (Instance.call). `num_ctx`: the request's context, when
    shorter than the instance's (the lease's context_length)."""
    if not inputs:
        return [], 0
    return embedder(nm).run(inputs, truncate, normalize, num_ctx)
