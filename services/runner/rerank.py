"""Cross-encoder reranking: one sequence per (query, document) pair, scored by rank pooling.

The model must load with `<arch>.pooling_type = 4` (LLAMA_POOLING_TYPE_RANK): llama.cpp
then pools the sequence (CLS for BERT, the last token for causal rerankers), applies the
classifier head (`cls`, `cls.output`) and returns n_cls_out floats per sequence; the score
is the first one, raw, as llama-server's /rerank reports it.

Pairs are built as llama-server's format_prompt_rerank builds them: the GGUF's
`tokenizer.chat_template.rerank` with {query} and {document} replaced when the model has
one, otherwise BOS query EOS SEP document EOS (each special only where the vocabulary
asks for it; EOS falls back to SEP), which is [CLS] q [SEP] d [SEP] for BERT.
"""

from __future__ import annotations

import llama_cpp as lc
import numpy as np

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner.embed import INPUT_TOO_LONG, Embedder, embedder
from services.runner.native import NativeModel

NOT_A_RERANKER = "the model does not support reranking (it has no rank pooling)"


def _invalid(msg: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_INVALID_ARGUMENT, msg)


class PairBuilder:
    """Token sequences for (query, document) pairs, each at most `limit` tokens."""

    def __init__(self, nm: NativeModel, limit: int) -> None:
        self.nm, self.limit = nm, limit
        self.template = nm.meta("tokenizer.chat_template.rerank")
        vocab = nm.vocab
        eos = lc.llama_vocab_eos(vocab)
        if eos == lc.LLAMA_TOKEN_NULL:
            eos = lc.llama_vocab_sep(vocab)
        self.bos = [lc.llama_vocab_bos(vocab)] if lc.llama_vocab_get_add_bos(vocab) else []
        self.eos = [eos] if lc.llama_vocab_get_add_eos(vocab) else []
        self.sep = [lc.llama_vocab_sep(vocab)] if lc.llama_vocab_get_add_sep(vocab) else []

    def build(self, query: str, doc: str, truncate: bool) -> list[int]:
        head, body, tail = self._parts(query, doc)
        if len(head) + len(body) + len(tail) <= self.limit:
            return head + body + tail
        if not truncate:
            raise CorralError(common_pb2.ERROR_REASON_PROMPT_TOO_LONG, INPUT_TOO_LONG)
        room = self.limit - len(head) - len(tail)
        if room <= 0:
            raise CorralError(
                common_pb2.ERROR_REASON_PROMPT_TOO_LONG, "the query leaves no room for a document in the context"
            )
        return head + body[:room] + tail  # cut the document, keep the query and the closing specials

    def _parts(self, query: str, doc: str) -> tuple[list[int], list[int], list[int]]:
        tok = self.nm.tokenize
        if self.template is None:
            q, d = tok(query, False, False), tok(doc, False, False)
            return self.bos + q + self.eos + self.sep, d, self.eos
        before, _, after = self.template.partition("{document}")
        # Specials are parsed in the template's text only, never in the user's query or document.
        return (
            self._render(before, query),
            tok(doc, False, False),
            self._render(after, query),
        )

    def _render(self, text: str, query: str) -> list[int]:
        out: list[int] = []
        for i, part in enumerate(text.split("{query}")):
            if i:
                out += self.nm.tokenize(query, False, False)
            if part:
                out += self.nm.tokenize(part, False, True)
        return out


def rerank(
    nm: NativeModel, query: str, documents: list[str], truncate: bool, num_ctx: int = 0
) -> tuple[list[float], int]:
    """Scores in document order and the tokens evaluated; runs on the owner thread (Instance.call).
    `num_ctx`: the request's context, when shorter than the instance's (a lease on a longer
    instance), so that pairs are cut as an instance of that context would cut them."""
    if not nm.is_embedding:
        raise _invalid(NOT_A_RERANKER)
    emb: Embedder = embedder(nm)
    if not emb.is_rank:
        raise _invalid(NOT_A_RERANKER)
    if not documents:
        return [], 0
    builder = PairBuilder(nm, min(emb.limit, num_ctx) if num_ctx > 0 else emb.limit)
    seqs = [builder.build(query, doc, truncate) for doc in documents]
    outputs = emb.pooled(seqs)
    scores = [float(v[0]) for v in outputs]
    if not np.isfinite(scores).all():
        raise CorralError(common_pb2.ERROR_REASON_RUNNER_FAILED, "a rerank score is NaN or Inf")
    return scores, sum(len(s) for s in seqs)
