"""Plain-Python views of a stored model, as the core returns them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from services.registry.gguf_meta import GGUFInfo
from services.registry.manifest import Layer


@dataclass(frozen=True)
class Details:
    """Ollama's `details` object, read from the config blob and the model layer."""

    format: str = ""
    family: str = ""
    families: tuple[str, ...] = ()
    parameter_size: str = ""
    quantization_level: str = ""
    parent_model: str = ""

    @classmethod
    def from_config(cls, config: dict[str, Any], parent_model: str) -> Details:
        families = config.get("model_families") or []
        return cls(
            format=str(config.get("model_format") or ""),
            family=str(config.get("model_family") or ""),
            families=tuple(str(f) for f in families) if isinstance(families, list) else (),
            parameter_size=str(config.get("model_type") or ""),
            quantization_level=str(config.get("file_type") or ""),
            parent_model=parent_model,
        )


@dataclass(frozen=True)
class StoredModel:
    """A model as the registry serves it.

    `list_models` fills the manifest/config fields only; `resolve` also fills
    the text layers and everything read from the GGUF (`gguf` is then set).
    """

    name: str  # display_shortest, e.g. "gemma3:latest"
    full_name: str  # "registry.ollama.ai/library/gemma3:latest"
    manifest_digest: str  # "sha256:<hex>" of the manifest file bytes
    size: int
    modified_at_ns: int  # manifest mtime
    details: Details
    layers: tuple[Layer, ...]
    config: dict[str, Any]
    model_digest: str = ""
    model_path: str = ""
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    licenses: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()  # MESSAGE (role, content) pairs
    adapters: tuple[tuple[str, str], ...] = ()  # ADAPTER layers: (digest, blob path)
    draft: tuple[str, str, int] | None = None  # DRAFT layer: (digest, blob path, size)
    projector_paths: tuple[str, ...] = ()
    gguf: GGUFInfo | None = None
    capabilities: tuple[str, ...] = ()

    @property
    def gguf_chat_template(self) -> str:
        return self.gguf.chat_template if self.gguf else ""

    @property
    def bos_token(self) -> str:
        return self.gguf.bos_token if self.gguf else ""

    @property
    def eos_token(self) -> str:
        return self.gguf.eos_token if self.gguf else ""

    @property
    def add_bos_token(self) -> bool:
        return self.gguf.add_bos_token if self.gguf else True

    @property
    def context_length_train(self) -> int:
        return self.gguf.context_length if self.gguf else 0


_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Geometry:
    """What the scheduler's memory estimate needs (common_pb2.ModelGeometry)."""

    block_count: int = 0
    embedding_length: int = 0
    head_count: int = 0
    head_count_kv: int = 0
    key_length: int = 0
    value_length: int = 0
    sliding_window: int = 0
    layer_bytes: tuple[int, ...] = ()
    output_bytes: int = 0
    other_bytes: int = 0
    vocab_size: int = 0


def geometry(info: GGUFInfo) -> Geometry:
    layers = [0] * info.block_count
    other = output = token_embd = 0
    for t in info.tensors:
        m = _BLOCK.match(t.name)
        if m and int(m.group(1)) < len(layers):
            layers[int(m.group(1))] += t.size
        else:
            other += t.size
        if t.name == "output.weight":
            output = t.size
        elif t.name == "token_embd.weight":
            token_embd = t.size
    window = info.kv.get(f"{info.architecture}.attention.sliding_window")
    return Geometry(
        block_count=info.block_count,
        embedding_length=info.embedding_length,
        head_count=info.head_count,
        head_count_kv=info.head_count_kv,
        key_length=info.key_length,
        value_length=info.value_length,
        sliding_window=window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else 0,
        layer_bytes=tuple(layers),
        output_bytes=output or token_embd,  # a tied head reads the token embedding
        other_bytes=other,
        vocab_size=info.elided_arrays.get("tokenizer.ggml.tokens") or len(info.kv.get("tokenizer.ggml.tokens") or []),
    )


POOLING_RANK = 4  # LLAMA_POOLING_TYPE_RANK


def is_reranker(gguf: GGUFInfo) -> bool:
    """A cross-encoder: llama.cpp pools it with the classifier head into relevance scores
    (`/api/rerank`); it produces no embeddings and generates no text."""
    return gguf.kv.get(f"{gguf.architecture}.pooling_type") == POOLING_RANK


def capabilities(gguf: GGUFInfo | None, template: str, has_projector: bool) -> tuple[str, ...]:
    """A first cut of Ollama's Model.Capabilities (server/images.go).

    Jinja and Go-template hints are unioned; Ollama prefers one template path
    per model, which the gateway's chat-mode choice will refine.
    """
    caps: list[str] = []
    if gguf is not None:
        arch = gguf.architecture
        if is_reranker(gguf):
            caps.append("rank")
        else:
            caps.append("embedding" if gguf.has_pooling_type else "completion")
        if f"{arch}.vision.block_count" in gguf.kv:
            caps.append("vision")
        if f"{arch}.audio.block_count" in gguf.kv:
            caps.append("audio")
        jinja = gguf.chat_template
        if "tools" in jinja or "tool_call" in jinja:
            caps.append("tools")
        if ("<think>" in jinja and "</think>" in jinja) or (
            "content.split('</think>')" in jinja and "reasoning_content" not in jinja
        ):
            caps.append("thinking")
    if has_projector:
        caps.append("vision")
    if ".Tools" in template:
        caps.append("tools")
    if ".Suffix" in template:
        caps.append("insert")
    if ".Thinking" in template:
        caps.append("thinking")
    return tuple(dict.fromkeys(caps))
