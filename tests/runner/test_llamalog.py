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


# Recorded from a llama.cpp load split over two GPUs (split mode LAYER), with a
# repacked CPU buffer for the layers left on the host.
TWO_GPU_LOAD = [
    (2, "load_tensors: offloading 18 repeating layers to GPU\n"),
    (2, "load_tensors:        CUDA0 model buffer size =   236.06 MiB\n"),
    (2, "load_tensors:        CUDA1 model buffer size =   200.00 MiB\n"),
    (2, "load_tensors:   CPU_REPACK model buffer size =    10.00 MiB\n"),
    (2, "load_tensors:   CPU_Mapped model buffer size =    40.00 MiB\n"),
    (2, "llama_context:  CUDA_Host  output buffer size =     1.00 MiB\n"),
    (2, "llama_kv_cache:      CUDA0 KV buffer size =    16.00 MiB\n"),
    (2, "llama_kv_cache:      CUDA1 KV buffer size =    14.00 MiB\n"),
    (2, "llama_context:      CUDA0 compute buffer size =    26.00 MiB\n"),
    (2, "llama_context:      CUDA1 compute buffer size =    24.00 MiB\n"),
    (2, "llama_context:  CUDA_Host compute buffer size =     5.01 MiB\n"),
]


def test_buffer_sizes_per_gpu_buffer() -> None:
    s = llamalog.buffer_sizes(TWO_GPU_LOAD)
    cuda0 = int(236.06 * MIB) + 16 * MIB + 26 * MIB
    cuda1 = (200 + 14 + 24) * MIB
    assert s.gpu_by_buffer == {"CUDA0": cuda0, "CUDA1": cuda1}  # host buffers are not listed
    assert s.gpu == cuda0 + cuda1
    assert s.weights == int(236.06 * MIB) + (200 + 10 + 40) * MIB
    assert s.kv == 30 * MIB
    assert s.compute == (1 + 26 + 24) * MIB + int(5.01 * MIB)


def test_single_gpu_per_buffer() -> None:
    assert llamalog.buffer_sizes(CUDA_LOAD).gpu_by_buffer == {"CUDA0": (200 + 12 + 30) * MIB}


def test_cuda_ordinal() -> None:
    assert llamalog.cuda_ordinal("CUDA0") == 0
    assert llamalog.cuda_ordinal("CUDA12") == 12
    assert llamalog.cuda_ordinal("CUDA_Host") is None
    assert llamalog.cuda_ordinal("Vulkan0") is None
