"""How much memory a model instance needs, from its GGUF geometry (pure functions).

weights (per block + the rest) + KV cache for num_ctx x num_parallel at the KV type
+ a compute-buffer allowance. docs/scheduler.md works the numbers for the Gemma test model.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.v1 import scheduler_pb2
from services.scheduler.inventory import LoadKey

KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# Families whose sliding-window layers alternate with global ones: every Nth layer is global
# (llama.cpp's n_swa_pattern; it is not in the GGUF). Unknown families count every layer global.
SWA_PATTERN = {"gemma2": 2, "gemma3": 6, "gemma3n": 5, "cohere2": 4}
KV_CELL_PADDING = 256  # llama.cpp rounds KV cells up to this
MIB = 1 << 20


@dataclass(frozen=True)
class Estimate:
    layers: tuple[int, ...]  # per block: its weights + its KV cache
    rest: int  # weights outside the blocks (embeddings, output head, norms)
    kv: int  # all KV cache (already inside `layers`)
    compute: int  # scratch buffers for one micro-batch and the logits

    @property
    def weights(self) -> int:
        return sum(self.layers) - self.kv + self.rest

    @property
    def total(self) -> int:
        return sum(self.layers) + self.rest + self.compute

    def on_gpu(self, gpu_layers: int) -> int:
        """Bytes on the GPU when the last `gpu_layers` blocks are offloaded (llama.cpp's order);
        offloading every block also moves the output head and the rest."""
        n = len(self.layers)
        if gpu_layers < 0 or gpu_layers >= n:
            return self.total
        if gpu_layers == 0:
            return 0
        return sum(self.layers[n - gpu_layers :]) + self.compute

    def layers_that_fit(self, available: int) -> int:
        """The most blocks that fit in `available` bytes (-1 = everything)."""
        if self.total <= available:
            return -1
        n = len(self.layers)
        for k in range(n, 0, -1):
            if self.on_gpu(k) <= available:
                return k
        return 0


def _pad(cells: int) -> int:
    return -(-cells // KV_CELL_PADDING) * KV_CELL_PADDING


def estimate(spec: scheduler_pb2.ModelSpec, key: LoadKey) -> Estimate:
    g = spec.geometry
    ctx_total = key.num_ctx * key.num_parallel
    if not g.block_count or not g.layer_bytes:
        # No geometry (an old index entry): weights + a generous KV guess.
        kv = ctx_total * max(1, spec.model_size_bytes // 100_000)
        return Estimate(
            layers=(kv,), rest=spec.model_size_bytes, kv=kv, compute=max(64 * MIB, spec.model_size_bytes // 10)
        )
    heads = g.head_count or 1
    key_len = g.key_length or g.embedding_length // heads
    value_len = g.value_length or g.embedding_length // heads
    kv_heads = g.head_count_kv or heads
    per_cell = kv_heads * (key_len + value_len) * KV_BYTES_PER_ELEMENT.get(key.kv_cache_type, 2.0)
    pattern = SWA_PATTERN.get(spec.details.family, 1) if g.sliding_window else 1
    full_cells = _pad(ctx_total)
    swa_cells = min(full_cells, _pad(g.sliding_window * key.num_parallel + key.num_batch))
    layers, kv_total = [], 0
    for i, weights in enumerate(g.layer_bytes):
        is_global = pattern <= 1 or (i + 1) % pattern == 0
        kv = int(per_cell * (full_cells if is_global else swa_cells))
        kv_total += kv
        layers.append(weights + kv)
    # One micro-batch's activations, the attention mask (f16, micro-batch x context) or, without
    # flash attention, the f32 attention scores of every head, and the logits of each sequence.
    activations = 4 * key.num_batch * g.embedding_length * 16
    attention = (
        4 * key.num_batch * ctx_total * heads if key.flash_attention is False else 2 * key.num_batch * ctx_total
    )
    compute = activations + attention + 4 * g.vocab_size * key.num_parallel
    return Estimate(layers=tuple(layers), rest=g.other_bytes, kv=kv_total, compute=compute)
