from __future__ import annotations

from services.runner import llamalog

CUDA_LOAD = [
    (2, "load_tensors:        CUDA0 model buffer size =   200.00 MiB\n"),
    (2, "load_tensors:   CPU_Mapped model buffer size =    50.00 MiB\n"),
    (2, "llama_context:  CUDA_Host  output buffer size =     1.00 MiB\n"),
    (2, "llama_kv_cache:        CUDA0 KV buffer size =    12.00 MiB\n"),
    (2, "sched_reserve:      CUDA0 compute buffer size =    30.00 MiB\n"),
    (2, "sched_reserve:  CUDA_Host compute buffer size =     4.00 MiB\n"),
    (4, "llama_model_load: error loading model: something broke\n"),
]
MIB = 1 << 20


def test_buffer_sizes_split_by_kind_and_device() -> None:
    s = llamalog.buffer_sizes(CUDA_LOAD)
    assert s.found
    assert s.weights == 250 * MIB
    assert s.kv == 12 * MIB
    assert s.compute == 35 * MIB  # output + compute buffers
    assert s.gpu == (200 + 12 + 30) * MIB  # CPU_* and *_Host stay in host RAM


def test_errors_keep_only_error_lines() -> None:
    assert llamalog.errors(CUDA_LOAD) == "llama_model_load: error loading model: something broke"


def test_no_buffer_lines() -> None:
    assert not llamalog.buffer_sizes([(2, "hello\n")]).found
