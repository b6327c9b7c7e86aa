"""Llama-family decoders (Llama, Mistral, Qwen2 shapes) → GGUF "llama" / "qwen2".

Follows convert_hf_to_gguf's LlamaModel: q/k projections are permuted from
Hugging Face's rotate-half layout to llama.cpp's interleaved one; a missing
lm_head (tied embeddings) is left out, llama.cpp then reuses token_embd.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGMLQuantizationType, GGUFWriter, RopeScalingType, get_tensor_name_map

from services.registry.convert.base import ModelDir, OutTensor, Plan, invalid, lazy, out_qtype
from services.registry.convert.tokenizers import add_bpe

ARCHITECTURES = {
    "LlamaForCausalLM": MODEL_ARCH.LLAMA,
    "MistralForCausalLM": MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": MODEL_ARCH.QWEN2,
}
_SKIP = ("rotary_emb.inv_freq",)


def _permute(n_head: int) -> Callable[[np.ndarray], np.ndarray]:
    def apply(w: np.ndarray) -> np.ndarray:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    return apply


def _llama3_rope_factors(md: ModelDir, head_dim: int, theta: float) -> np.ndarray:
    rs = md.config["rope_scaling"]
    factor, low, high = (
        float(rs.get("factor", 8.0)),
        float(rs.get("low_freq_factor", 1.0)),
        float(rs.get("high_freq_factor", 4.0)),
    )
    old_ctx = float(rs.get("original_max_position_embeddings", 8192))
    out = []
    for freq in 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def plan(md: ModelDir, outtype: str, arch: MODEL_ARCH) -> Plan:
    n_layer = int(md.hparam("num_hidden_layers"))
    n_head = int(md.hparam("num_attention_heads"))
    n_head_kv = int(md.hparam("num_key_value_heads", default=n_head))
    n_embd = int(md.hparam("hidden_size"))
    head_dim = int(md.config.get("head_dim") or n_embd // n_head)
    theta = float(md.hparam("rope_theta", default=10000.0))
    scaling = md.config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type not in ("default", "linear", "llama3"):
        raise invalid(f"unsupported rope_scaling type {rope_type!r}")
    names = get_tensor_name_map(arch, n_layer)
    tensors: list[OutTensor] = []
    for src, ref in md.tensors.items():
        if src.endswith(_SKIP):
            continue
        new = names.get_name(src, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise invalid(f"cannot map tensor {src!r}")
        transform = None
        if arch == MODEL_ARCH.LLAMA and new.endswith(("attn_q.weight", "attn_k.weight")):
            transform = _permute(n_head if "attn_q" in new else n_head_kv)
        tensors.append(OutTensor(new, ref.shape, lazy(ref, transform), out_qtype(new, len(ref.shape), outtype)))
    if rope_type == "llama3":
        factors = _llama3_rope_factors(md, head_dim, theta)
        tensors.append(OutTensor("rope_freqs.weight", factors.shape, lambda: factors, GGMLQuantizationType.F32))
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise invalid("token embeddings are missing")

    def write_kv(w: GGUFWriter) -> None:
        w.add_name(str(md.config.get("_name_or_path") or md.config.get("model_type") or "model").rsplit("/", 1)[-1])
        w.add_vocab_size(embd.shape[0])
        w.add_context_length(int(md.hparam("max_position_embeddings")))
        w.add_embedding_length(n_embd)
        w.add_block_count(n_layer)
        w.add_feed_forward_length(int(md.hparam("intermediate_size")))
        w.add_head_count(n_head)
        w.add_head_count_kv(n_head_kv)
        w.add_layer_norm_rms_eps(float(md.hparam("rms_norm_eps", default=1e-6)))
        w.add_rope_freq_base(theta)
        w.add_rope_dimension_count(head_dim)
        if head_dim != n_embd // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        if rope_type == "linear":
            w.add_rope_scaling_type(RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(scaling["factor"]))
        add_bpe(w, md, embd.shape[0])

    return Plan(MODEL_ARCH_NAMES[arch], write_kv, tensors)
