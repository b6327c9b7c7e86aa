"""One llama.cpp model + context, through llama-cpp-python's low-level bindings.

A `NativeModel` belongs to exactly one thread (the instance's owner thread in
engine.py); llama.cpp allows one thread per context, and the model is freed by
that same thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import llama_cpp as lc

from corral.errors import CorralError
from corral.v1 import common_pb2
from services.runner import llamalog
from services.runner.devices import cpu_threads

log = logging.getLogger(__name__)

DEFAULT_NUM_CTX = 4096  # Ollama's tier for < 23 GiB when the scheduler sends 0
DEFAULT_NUM_BATCH = 512
EMBED_MAX_SEQS = 16  # inputs per embedding batch
# Output rows per batch beyond one per sequence: drafted tokens under verification
# (speculative decoding). Each costs n_vocab floats of logits (1 MiB for Gemma 3).
DRAFT_ROWS = 24
KV_TYPES = {"": lc.GGML_TYPE_F16, "f16": lc.GGML_TYPE_F16, "q8_0": lc.GGML_TYPE_Q8_0, "q4_0": lc.GGML_TYPE_Q4_0}
_KV_BYTES = {lc.GGML_TYPE_F16: 2.0, lc.GGML_TYPE_Q8_0: 34 / 32, lc.GGML_TYPE_Q4_0: 18 / 32}
MAX_DEVICES = int(lc.LLAMA_MAX_DEVICES)  # length of llama_model_params.tensor_split

_backend_lock = threading.Lock()
_backend_ready = False


def _backend_init() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llamalog.install()
            lc.llama_backend_init()
            _backend_ready = True


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this llama.cpp build uses Intel AMX here. Its AMX weight buffers (an "extra
    buffer type") crash batched decodes of llama.cpp 0.3.36 with SIGSEGV and double the
    weights' memory, so the runner loads without extra buffer types on such CPUs (Sapphire
    Rapids and later), as llama-server's --no-repack does."""
    lib = Path(lc.__file__).parent / "lib" / "libggml-cpu.so"
    try:
        return bool(ctypes.CDLL(str(lib)).ggml_cpu_has_amx_int8())
    except (OSError, AttributeError):
        return False


def use_batch_invariant_kernels() -> None:
    """Process-wide, before the first decode (llama.cpp reads it once): no tiled K-quant
    matmul, which takes batches of 8 rows or more only and rounds them differently. With
    flash attention over a quantized KV cache (never tiled or split over the KV) every
    CPU kernel then computes a row the same whatever else is in its batch."""
    os.environ["GGML_CPU_TILED_MM"] = "0"


def tiled_matmul_off() -> bool:
    return os.environ.get("GGML_CPU_TILED_MM", "").strip() == "0"


@contextlib.contextmanager
def high_level_defaults_like_the_runner() -> Iterator[None]:
    """While active, llama-cpp-python's high-level `Llama` loads as the runner does where that
    matters for correctness: no extra buffer types on AMX CPUs (cpu_has_amx). For benchmarks
    and reference tests that call `Llama` directly."""
    import llama_cpp.llama_cpp as bindings  # the module `Llama` reads its defaults from

    default = bindings.llama_model_default_params
    if not cpu_has_amx():
        yield
        return

    def params() -> lc.llama_model_params:
        p = default()
        p.use_extra_bufts = False
        return p

    bindings.llama_model_default_params = params
    try:
        yield
    finally:
        bindings.llama_model_default_params = default


class Freeable(Protocol):
    def free(self) -> None: ...


def _offset(ptr: Any, start: int) -> Any:
    """`ptr + start` for a ctypes pointer, same type."""
    addr = ctypes.cast(ptr, ctypes.c_void_p).value or 0
    return ctypes.cast(addr + start * ctypes.sizeof(ptr._type_), type(ptr))


DEFAULT_DRAFT_NUM_PREDICT = 4  # Ollama's draft_num_predict


def _load_failed(msg: str) -> CorralError:
    return CorralError(common_pb2.ERROR_REASON_LOAD_FAILED, msg)


@dataclass(frozen=True)
class LoadSpec:
    """How to load an instance (LoadOptions after defaults)."""

    model_path: str
    num_ctx: int = DEFAULT_NUM_CTX  # per sequence
    num_batch: int = DEFAULT_NUM_BATCH
    num_parallel: int = 1
    num_thread: int = 0  # 0 = physical cores
    num_gpu: int = 0  # layers offloaded; negative = all
    # Placement over the runner's GPUs, by CUDA ordinal (k = the runner's k-th device,
    # see devices.cuda_env). tensor_split wins (split mode LAYER); else main_gpu holds
    # the whole model (split mode NONE); neither = llama.cpp's default split.
    main_gpu: int | None = None
    tensor_split: tuple[float, ...] = ()
    gpu_ids: tuple[str, ...] = ()  # Device.id of CUDA ordinal k, for the memory report
    use_mmap: bool | None = None  # None = llama.cpp's choice
    flash_attention: bool | None = None  # None = llama.cpp AUTO
    kv_cache_type: str = "f16"
    adapters: tuple[tuple[str, float], ...] = ()  # (path, scale)
    # Content digests of model_path and of each adapter ("" = unknown): a runner that
    # cannot open those paths fetches the blobs by digest (blobs.py).
    model_digest: str = ""
    adapter_digests: tuple[str, ...] = ()
    # A smaller model of the same vocabulary for speculative decoding ("" = none), loaded with
    # the same context, devices and KV settings, and the most tokens it drafts per step.
    draft_model_path: str = ""
    draft_model_digest: str = ""
    draft_num_predict: int = DEFAULT_DRAFT_NUM_PREDICT

    def draft(self) -> LoadSpec:
        """The load spec of the draft model."""
        return replace(
            self,
            model_path=self.draft_model_path,
            model_digest=self.draft_model_digest,
            adapters=(),
            adapter_digests=(),
            draft_model_path="",
            draft_model_digest="",
        )


@dataclass(frozen=True)
class MemoryUsage:
    weights_bytes: int
    kv_cache_bytes: int
    compute_bytes: int
    gpu_bytes: int
    devices: tuple[tuple[str, int], ...] = ()  # (Device.id, bytes) of the GPU part; sums to gpu_bytes

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.compute_bytes

    def __add__(self, other: MemoryUsage) -> MemoryUsage:
        devices = dict(self.devices)
        for dev, size in other.devices:
            devices[dev] = devices.get(dev, 0) + size
        return MemoryUsage(
            self.weights_bytes + other.weights_bytes,
            self.kv_cache_bytes + other.kv_cache_bytes,
            self.compute_bytes + other.compute_bytes,
            self.gpu_bytes + other.gpu_bytes,
            tuple(devices.items()),
        )


def set_placement(mp: lc.llama_model_params, spec: LoadSpec) -> ctypes.Array[ctypes.c_float] | None:
    """Sets split mode, main GPU and tensor split on `mp`.

    Returns the float array `mp.tensor_split` points to: the caller keeps it alive
    until llama_model_load_from_file returns (ctypes does not own it through mp).
    """
    if spec.tensor_split:
        if len(spec.tensor_split) > MAX_DEVICES:
            raise _load_failed(f"tensor_split has {len(spec.tensor_split)} entries; llama.cpp takes {MAX_DEVICES}")
        split = (ctypes.c_float * MAX_DEVICES)(*spec.tensor_split)  # unused tail stays 0
        mp.split_mode = lc.LLAMA_SPLIT_MODE_LAYER
        mp.tensor_split = split
        return split
    if spec.main_gpu is not None:
        mp.split_mode = lc.LLAMA_SPLIT_MODE_NONE
        mp.main_gpu = spec.main_gpu
    return None


def _buffer_device(buf_name: str, gpu_ids: Sequence[str]) -> str:
    k = llamalog.cuda_ordinal(buf_name)
    if k is None:
        return buf_name
    return gpu_ids[k] if k < len(gpu_ids) else f"cuda:{k}"


def gpu_memory_by_device(by_buffer: dict[str, int], gpu_ids: Sequence[str]) -> tuple[tuple[str, int], ...]:
    """Maps llama.cpp's GPU buffer names to the runner's device ids, in the runner's order.

    "CUDAk" is CUDA ordinal k, the runner's k-th GPU (CUDA_VISIBLE_DEVICES pinning);
    without an id for it, "cuda:k". Other names are kept as they are.
    """
    out: dict[str, int] = {}
    for name, size in by_buffer.items():
        dev = _buffer_device(name, gpu_ids)
        out[dev] = out.get(dev, 0) + size
    rank = {d: i for i, d in enumerate(gpu_ids)}
    return tuple(sorted(out.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


class NativeModel:
    def __init__(self, spec: LoadSpec, on_progress: Callable[[float], bool] | None = None) -> None:
        """`on_progress(fraction)` is called while the weights load; returning False aborts the load."""
        self.spec = spec
        self._on_progress = on_progress
        self.model: int | None = None
        self.ctx: int | None = None
        self.batch: lc.llama_batch | None = None
        self.embedder: Freeable | None = None  # embed.Embedder, created on first use
        self._pieces: dict[int, bytes] = {}
        _backend_init()
        path = Path(spec.model_path)
        if not path.is_file():
            raise _load_failed(f"model file not found: {path}")
        with path.open("rb") as f:
            if f.read(4) != b"GGUF":
                raise _load_failed(f"{path} is not a GGUF file")
        with llamalog.capture() as lines:
            try:
                self._load(path)
            except CorralError as err:
                self.free()
                reason = llamalog.errors(lines)
                raise _load_failed(f"{err.message}: {reason}" if reason else err.message) from None
            except BaseException:
                self.free()
                raise
        self.memory = self._memory_usage(llamalog.buffer_sizes(lines))

    def _load(self, path: Path) -> None:
        spec = self.spec
        kv_type = KV_TYPES.get(spec.kv_cache_type.lower())
        if kv_type is None:
            raise _load_failed(f"unknown kv cache type {spec.kv_cache_type!r}; use f16, q8_0 or q4_0")
        if kv_type != lc.GGML_TYPE_F16 and spec.flash_attention is False:
            log.warning("quantized KV cache needs flash attention; using f16")
            kv_type = lc.GGML_TYPE_F16
        self.kv_type = kv_type
        # Same logits for a row whatever shares its batch (use_batch_invariant_kernels);
        # GPU kernels promise no such thing.
        self.batch_invariant = (
            tiled_matmul_off() and kv_type != lc.GGML_TYPE_F16 and spec.flash_attention is True and spec.num_gpu == 0
        )
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0x7FFFFFFF if spec.num_gpu < 0 else spec.num_gpu
        # Repacked weights (an "extra buffer type") multiply 4 rows at a time and the rest one
        # by one, which rounds a row differently by batch size; see also cpu_has_amx().
        if cpu_has_amx() or self.batch_invariant:
            mp.use_extra_bufts = False
        self._tensor_split = set_placement(mp, spec)  # kept on self: llama.cpp reads it during the load
        if spec.use_mmap is not None:
            mp.load_mode = lc.LLAMA_LOAD_MODE_MMAP if spec.use_mmap else lc.LLAMA_LOAD_MODE_NONE
        if self._on_progress is not None:
            report = self._on_progress
            # Kept on self: llama.cpp calls it until the load returns.
            self._progress_cb = lc.llama_progress_callback(lambda fraction, _user: bool(report(float(fraction))))
            mp.progress_callback = self._progress_cb
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise _load_failed(f"llama.cpp could not load {path}")
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.arch = self.meta("general.architecture") or ""
        self.is_embedding = self.meta(f"{self.arch}.pooling_type") is not None
        n_train = lc.llama_model_n_ctx_train(self.model)
        num_ctx = spec.num_ctx if spec.num_ctx > 0 else DEFAULT_NUM_CTX
        self.num_ctx = max(4, min(num_ctx, n_train) if n_train > 0 else num_ctx)
        self.num_parallel = max(1, spec.num_parallel)
        nb = spec.num_batch if spec.num_batch > 0 else DEFAULT_NUM_BATCH
        self.n_batch = max(nb, self.num_parallel)  # every generating sequence needs a row
        n_seq = self.num_parallel
        if self.is_embedding:
            # Inputs go to separate sequences of one batch, each whole in one ubatch
            # (Ollama: num_batch 2048 for embedding models, capped at num_ctx).
            self.n_batch = min(self.num_ctx, spec.num_batch if spec.num_batch > 0 else 2048)
            n_seq = max(n_seq, EMBED_MAX_SEQS)
        self.n_seq_max = n_seq

        self.threads = spec.num_thread if spec.num_thread > 0 else cpu_threads()
        cp = self.context_params(self.num_ctx * self.num_parallel, n_seq, self.n_batch, self.is_embedding)
        if not self.is_embedding:
            # One output row per sequence plus the drafted rows; the default (n_batch)
            # reserves n_batch x n_vocab floats of logits (512 MiB for Gemma 3).
            self.n_outputs_max = min(self.n_batch, self.num_parallel + DRAFT_ROWS)
            cp.n_outputs_max = self.n_outputs_max
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise _load_failed("llama.cpp could not create the context")
        self._init_adapters()
        self.apply_adapters(self.ctx)
        self.mem = lc.llama_get_memory(self.ctx)
        self.n_swa = lc.llama_model_n_swa(self.model)  # 0 = no sliding window
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)

    def context_params(self, n_ctx: int, n_seq: int, n_batch: int, embeddings: bool) -> lc.llama_context_params:
        """The pinned settings (threads, KV type, flash attention, SWA) for any context of this model."""
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_seq_max = n_seq
        # One stream per sequence when batch-invariant: in a shared (unified) cache a sequence's
        # cells end up in whatever order allocation left them, and attention sums them in cell
        # order, so the same tokens could round differently under different load.
        cp.kv_unified = not getattr(self, "batch_invariant", False)
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_threads = self.threads
        cp.n_threads_batch = self.threads
        cp.type_k = self.kv_type
        cp.type_v = self.kv_type
        cp.swa_full = False  # like llama-server: SWA layers keep only the window
        cp.no_perf = True
        cp.flash_attn_type = {
            None: lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
            True: lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
            False: lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }[self.spec.flash_attention]
        cp.embeddings = embeddings
        return cp

    def _init_adapters(self) -> None:
        """LoRA adapters belong to the instance: a different set is a different instance,
        so sequences with different adapters never share a batch."""
        self._adapters: list[Any] = []
        for a_path, _scale in self.spec.adapters:
            h = lc.llama_adapter_lora_init(self.model, a_path.encode())
            if not h:
                raise _load_failed(f"llama.cpp could not load the adapter {a_path}")
            self._adapters.append(h)  # freed with the model

    def apply_adapters(self, ctx: Any) -> None:
        n = len(self._adapters)
        if not n:
            return
        arr = (lc.llama_adapter_lora_p_ctypes * n)(*self._adapters)
        scales = (ctypes.c_float * n)(*[s or 1.0 for _p, s in self.spec.adapters])
        if lc.llama_set_adapters_lora(ctx, arr, n, scales) != 0:
            raise _load_failed("llama.cpp could not apply the adapters")

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def _memory_usage(self, sizes: llamalog.BufferSizes) -> MemoryUsage:
        """Buffer sizes from llama.cpp's load log (what llama-server/Ollama report).

        Without those lines: weights = llama_model_size, KV computed from the
        hparams for the full context (an upper bound with a sliding window),
        compute unknown (0).
        """
        if sizes.found:
            devices = gpu_memory_by_device(sizes.gpu_by_buffer, self.spec.gpu_ids)
            return MemoryUsage(sizes.weights, sizes.kv, sizes.compute, sizes.gpu, devices)
        assert self.model is not None
        n_layer = lc.llama_model_n_layer(self.model)
        n_head = max(1, lc.llama_model_n_head(self.model))
        n_head_kv = lc.llama_model_n_head_kv(self.model)
        head = lc.llama_model_n_embd(self.model) // n_head
        k_len = int(self.meta(f"{self.arch}.attention.key_length") or head)
        v_len = int(self.meta(f"{self.arch}.attention.value_length") or head)
        cells = self.num_ctx * self.num_parallel
        kv = int(n_layer * cells * n_head_kv * (k_len + v_len) * _KV_BYTES[self.kv_type])
        return MemoryUsage(int(lc.llama_model_size(self.model)), kv, 0, 0)

    # --- vocabulary ---

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        while True:
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            cap = -n

    def detokenize(self, tokens: list[int]) -> str:
        """Special tokens are rendered as text, like llama-server's /detokenize."""
        arr = (lc.llama_token * len(tokens))(*tokens)
        cap = max(64, len(tokens) * 8)
        while True:
            buf = ctypes.create_string_buffer(cap)
            n = lc.llama_detokenize(self.vocab, arr, len(tokens), buf, cap, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            cap = -n

    def piece(self, token: int) -> bytes:
        """The token's bytes; control tokens render empty. Memoized: called for every
        generated token, and a vocabulary's pieces never change."""
        out = self._pieces.get(token)
        if out is None:
            out = self._pieces[token] = self._piece(token)
        return out

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        return buf.raw[: max(n, 0)]

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    # --- batch ---

    def batch_add(self, row: int, token: int, pos: int, seq_id: int, output: bool) -> None:
        b = self.batch
        assert b is not None
        b.token[row] = token
        b.pos[row] = pos  # type: ignore[call-overload]  # the binding's stub says 2-D
        b.n_seq_id[row] = 1
        b.seq_id[row][0] = seq_id
        b.logits[row] = 1 if output else 0

    def decode(self, n_tokens: int, start: int = 0) -> int:
        """Decodes rows [start, start + n_tokens) of the batch (a view, as llama-server retries)."""
        b = self.batch
        assert b is not None
        if start == 0:
            b.n_tokens = n_tokens
            return int(lc.llama_decode(self.ctx, b))
        view = lc.llama_batch(
            n_tokens,
            _offset(b.token, start),
            None,
            _offset(b.pos, start),
            _offset(b.n_seq_id, start),
            _offset(b.seq_id, start),
            _offset(b.logits, start),
        )
        return int(lc.llama_decode(self.ctx, view))

    def seq_rm(self, seq_id: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(lc.llama_memory_seq_rm(self.mem, seq_id, p0, p1))

    def seq_cp(self, src: int, dst: int, n: int) -> bool:
        """Gives the empty sequence dst src's KV of positions [0, n). A unified KV cache shares
        the cells (metadata only); per-sequence streams (batch-invariant mode) copy src's
        snapshot, since llama.cpp copies between streams only whole. False: no room."""
        if not self.batch_invariant:
            lc.llama_memory_seq_cp(self.mem, src, dst, 0, n)
            return True
        data = self.state_seq_get(src)
        if data is None or not self.state_seq_set(dst, data):
            self.seq_rm(dst)
            return False
        self.seq_rm(dst, n)
        return True

    def state_seq_get(self, seq_id: int, max_bytes: int = 1 << 62) -> bytes | None:
        """A snapshot of one sequence's KV (what llama_state_seq_set_data restores);
        None if it would exceed max_bytes."""
        size = lc.llama_state_seq_get_size(self.ctx, seq_id)
        if size > max_bytes:
            return None
        buf = (ctypes.c_uint8 * size)()
        n = lc.llama_state_seq_get_data(self.ctx, buf, size, seq_id)
        return bytes(memoryview(buf)[:n])

    def state_seq_set(self, seq_id: int, data: bytes) -> bool:
        """Restores a snapshot into an empty sequence; False if llama.cpp found no room."""
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        return int(lc.llama_state_seq_set_data(self.ctx, buf, len(data), seq_id)) > 0

    def seq_add(self, seq_id: int, p0: int, p1: int, delta: int) -> None:
        lc.llama_memory_seq_add(self.mem, seq_id, p0, p1, delta)

    @property
    def can_shift(self) -> bool:
        """Positions can be shifted (RoPE K-shift) and no sliding window would lose them."""
        return self.n_swa == 0 and bool(self.mem) and bool(lc.llama_memory_can_shift(self.mem))

    def seq_pos_min(self, seq_id: int) -> int:
        return int(lc.llama_memory_seq_pos_min(self.mem, seq_id))

    def free(self) -> None:
        if self.embedder is not None:
            self.embedder.free()
            self.embedder = None
        if self.batch is not None:
            lc.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lc.llama_model_free(self.model)
            self.model = None
