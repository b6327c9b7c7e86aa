"""Context limits as Ollama's runner / llama-server handle them: num_keep, prompt
truncation and context shift."""

from __future__ import annotations

import llama_cpp as lc

from services.runner.native import NativeModel

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; shorten the prompt, "
    "adjust the context length in settings, or use a model with a longer context length"
)


def keep_count(nm: NativeModel, num_ctx: int, tokens: list[int], num_keep: int) -> int:
    """Tokens kept at the front: num_keep (negative = all) plus a leading BOS, as llama-server
    adds `add_bos_token` to n_keep."""
    bos = 1 if tokens and tokens[0] == lc.llama_vocab_bos(nm.vocab) else 0
    keep = len(tokens) if num_keep < 0 else num_keep + bos
    return max(0, min(keep, num_ctx // 2))  # at least half the context stays free to shift into


def truncate_prompt(tokens: list[int], num_ctx: int, keep: int) -> list[int]:
    """Keeps the first `keep` tokens and the newest rest, leaving half of the remaining
    context free for the answer (Ollama: limit = num_ctx - max((num_ctx - num_keep) / 2, 1))."""
    limit = num_ctx - max((num_ctx - keep) // 2, 1)
    tail = limit - keep
    return tokens[:keep] + tokens[len(tokens) - tail :]


def shift(nm: NativeModel, seq_id: int, cached: list[int], n_past: int, keep: int) -> int:
    """Discards half of the positions after `keep` from the sequence's KV cache and slides
    the rest down (llama_memory_seq_rm + seq_add); `cached` is edited to match. Returns the
    new n_past."""
    n_discard = max(1, (n_past - keep) // 2)
    nm.seq_rm(seq_id, keep, keep + n_discard)
    nm.seq_add(seq_id, keep + n_discard, n_past, -n_discard)
    del cached[keep : keep + n_discard]
    return n_past - n_discard
