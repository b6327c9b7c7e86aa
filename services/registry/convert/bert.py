"""BERT encoders (sentence-transformers embedding models such as all-MiniLM-L6-v2) → GGUF "bert".

Follows convert_hf_to_gguf's BertModel: the pooler and MLM heads are dropped,
position and token-type embeddings stay F32, and the sentence-transformers
pooling (1_Pooling/config.json) becomes `bert.pooling_type`.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGUFWriter, PoolingType, get_tensor_name_map

from services.registry.convert.base import ModelDir, OutTensor, Plan, invalid, lazy, out_qtype
from services.registry.convert.tokenizers import add_wordpiece

ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")
_SKIP = ("embeddings.position_ids", "pooler.", "cls.")
_KEEP_F32 = ("position_embd.", "token_types.")


def pooling_type(md: ModelDir) -> PoolingType:
    """The sentence-transformers Pooling module's mode; CLS (BERT's own) without one."""
    modules = md.json("modules.json") or []
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
            cfg = md.json(f"{module.get('path') or '1_Pooling'}/config.json") or {}
            if cfg.get("pooling_mode_mean_tokens"):
                return PoolingType.MEAN
            if cfg.get("pooling_mode_cls_token"):
                return PoolingType.CLS
            if cfg.get("pooling_mode_lasttoken"):
                return PoolingType.LAST
            raise invalid("unsupported sentence-transformers pooling mode")
    return PoolingType.CLS


def plan(md: ModelDir, outtype: str) -> Plan:
    n_layer = int(md.hparam("num_hidden_layers"))
    names = get_tensor_name_map(MODEL_ARCH.BERT, n_layer)
    tensors: list[OutTensor] = []
    for src, ref in md.tensors.items():
        name = src.removeprefix("bert.")
        if name.startswith(_SKIP):
            continue
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # old LayerNorm spelling
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise invalid(f"cannot map tensor {src!r}")
        tensors.append(OutTensor(new, ref.shape, lazy(ref), out_qtype(new, len(ref.shape), outtype, _KEEP_F32)))
    vocab_rows = md.tensors.get("embeddings.word_embeddings.weight") or md.tensors.get(
        "bert.embeddings.word_embeddings.weight"
    )
    if vocab_rows is None:
        raise invalid("word embeddings are missing")
    pooling = pooling_type(md)

    def write_kv(w: GGUFWriter) -> None:
        w.add_name(str(md.config.get("_name_or_path") or "bert").rsplit("/", 1)[-1])
        w.add_context_length(int(md.hparam("max_position_embeddings")))
        w.add_embedding_length(int(md.hparam("hidden_size")))
        w.add_feed_forward_length(int(md.hparam("intermediate_size")))
        w.add_block_count(n_layer)
        w.add_head_count(int(md.hparam("num_attention_heads")))
        w.add_layer_norm_eps(float(md.hparam("layer_norm_eps", default=1e-12)))
        w.add_causal_attention(False)
        w.add_pooling_type(pooling)
        w.add_token_type_count(int(md.hparam("type_vocab_size", default=2)))
        add_wordpiece(w, md, vocab_rows.shape[0])

    return Plan(MODEL_ARCH_NAMES[MODEL_ARCH.BERT], write_kv, tensors)
