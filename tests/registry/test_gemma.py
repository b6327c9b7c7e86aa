"""The real Gemma 3 270M file, parsed once through create and resolve."""

from __future__ import annotations

import os
from pathlib import Path

from services.registry.core import Registry
from services.registry.create import CreateRequest
from tests import assets
from tests.registry.helpers import create


async def test_gemma_create_and_resolve(registry: Registry, gemma_path: Path) -> None:
    digest = assets.gemma_digest()
    blob = registry.store.blob_path(digest)
    try:
        os.link(gemma_path, blob)  # no 250 MB copy
    except OSError:
        blob.symlink_to(gemma_path)
    await create(registry, CreateRequest(name="gemma3:270m", files={"gemma.gguf": digest}))
    m = await registry.resolve("gemma3:270m")
    assert m.details.family == "gemma3"
    assert m.details.families == ("gemma3",)
    assert m.details.parameter_size == "268.10M"
    assert m.details.quantization_level == "Q4_K_M"
    assert m.context_length_train == 32768
    assert m.capabilities == ("completion",)
    assert m.gguf is not None
    assert m.gguf.parameter_count == 268_098_176
    assert (m.gguf.embedding_length, m.gguf.block_count, m.gguf.head_count_kv) == (640, 18, 1)
    assert m.gguf.elided_arrays["tokenizer.ggml.tokens"] == 262_144
    # This build of the file ships no tokenizer.chat_template: the gateway needs a fallback template.
    assert m.gguf_chat_template == ""
    assert (m.bos_token, m.eos_token, m.add_bos_token) == ("<bos>", "<eos>", True)


def test_gemma_geometry_for_the_memory_estimate(gemma_path: Path) -> None:
    from services.registry.gguf_meta import read_gguf_info
    from services.registry.model import geometry

    g = geometry(read_gguf_info(gemma_path))
    assert (g.block_count, g.head_count, g.head_count_kv, g.key_length, g.sliding_window) == (18, 4, 1, 256, 512)
    assert len(g.layer_bytes) == 18 and all(b > 3_000_000 for b in g.layer_bytes)
    # The LM head is tied to the 262144 x 640 Q8_0 token embedding.
    assert g.output_bytes == 262144 * 640 // 32 * 34
    assert sum(g.layer_bytes) + g.other_bytes == sum(t.size for t in read_gguf_info(gemma_path).tensors)
