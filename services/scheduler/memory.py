"""How much memory a model instance needs, from its GGUF geometry (pure functions).

weights (per block + the rest) + KV cache for num_ctx x num_parallel at the KV type
+ a compute-buffer allowance. docs/scheduler.md works the numbers for the Gemma test model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

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
    output: int | None = None  # the head, which goes to a GPU (the token embedding stays in RAM); None = rest

    @property
    def weights(self) -> int:
        return sum(self.layers) - self.kv + self.rest

    @property
    def total(self) -> int:
        return sum(self.layers) + self.rest + self.compute

    def offloaded(self, gpu_layers: int) -> tuple[int, ...]:
        """What llama.cpp puts on GPUs for n_gpu_layers = `gpu_layers`, in its order: it counts the
        output layer (the head) as one more layer after the blocks and offloads the last ones,
        so k layers are the last k - 1 blocks and the head; -1 = everything."""
        units = (*self.layers, self.rest if self.output is None else self.output)
        if gpu_layers < 0 or gpu_layers >= len(units):
            return units
        return units[len(units) - gpu_layers :] if gpu_layers > 0 else ()


@dataclass(frozen=True)
class Split:
    """How an instance's GPU part lies over one or more GPUs."""

    gpu_layers: int  # llama.cpp's n_gpu_layers (the head counts as one); -1 = all
    units: tuple[int, ...]  # per device: offloaded units it holds (llama.cpp's tensor_split)
    device_bytes: tuple[int, ...]  # per device: estimated bytes, compute buffer included


def split(est: Estimate, room: Sequence[int], gpu_layers: int = -1) -> Split | None:
    """Spread the offloaded units over devices with `room` bytes free each, in proportion to
    their room after a compute buffer (llama.cpp allocates one on every device it uses), in
    order as llama.cpp's layer split does. None when they do not fit."""
    units = est.offloaded(gpu_layers)
    caps = [max(0, r - est.compute) for r in room]
    need, total_cap = sum(units), sum(caps)
    if need > total_cap:
        return None
    counts, used = [0] * len(caps), [0] * len(caps)
    last = max((i for i, c in enumerate(caps) if c > 0), default=-1)
    i = 0
    for u in units:
        # Move on when the unit does not fit here, or this device has its share and a later one has room.
        while i < len(caps) and (
            used[i] + u > caps[i] or (i < last and used[i] and used[i] + u / 2 > need * caps[i] / total_cap)
        ):
            i += 1
        if i == len(caps):
            return None
        counts[i] += 1
        used[i] += u
    nbytes = tuple(b + est.compute if c else 0 for b, c in zip(used, counts, strict=True))
    return Split(gpu_layers, tuple(counts), nbytes)


def most_layers(est: Estimate, room: Sequence[int]) -> Split | None:
    """The split offloading the most layers that fit (everything when it all fits); None when nothing does."""
    for k in (-1, *range(len(est.layers), 0, -1)):
        fitted = split(est, room, k)
        if fitted is not None and any(fitted.device_bytes):
            return fitted
    return None


def _pad(cells: int) -> int:
    return -(-cells // KV_CELL_PADDING) * KV_CELL_PADDING


def estimate(spec: scheduler_pb2.ModelSpec, key: LoadKey) -> Estimate:
    est = _estimate_model(spec, key)
    if key.draft is None:
        return est
    # The draft model loads with the model's context and devices; its geometry is not indexed,
    # so its weights plus the generous no-geometry KV guess, placed with the output head.
    size = key.draft[2]
    draft = size + key.num_ctx * key.num_parallel * max(1, size // 100_000)
    output = None if est.output is None else est.output + draft
    return replace(est, rest=est.rest + draft, output=output)


def _estimate_model(spec: scheduler_pb2.ModelSpec, key: LoadKey) -> Estimate:
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
    attention = 4 * key.num_batch * ctx_total * heads if key.flash_attention is False else 2 * key.num_batch * ctx_total
    compute = activations + attention + 4 * g.vocab_size * key.num_parallel
    return Estimate(
        layers=tuple(layers), rest=g.other_bytes, kv=kv_total, compute=compute, output=g.output_bytes or None
    )
