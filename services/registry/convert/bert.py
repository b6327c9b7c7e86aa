"""BERT encoders (sentence-transformers embedding models such as all-MiniLM-L6-v2) → GGUF "bert".

Follows convert_hf_to_gguf's BertModel: the pooler and MLM heads are dropped,
position and token-type embeddings stay F32, and the sentence-transformers
pooling (1_Pooling/config.json) becomes `bert.pooling_type`.

A BertForSequenceClassification (a cross-encoder reranker such as ms-marco-MiniLM)
keeps its whole head as llama.cpp's rank pooling computes it: the pooler's dense
layer becomes `cls` (tanh(W·h[CLS] + b)) and the classifier `cls.output`, with
`bert.pooling_type` = RANK and one `classifier.output_labels` entry per output.
convert_hf_to_gguf drops the pooler here, which scores with a different head
than Hugging Face's model.
"""

from __future__ import annotations

from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, GGUFWriter, PoolingType, get_tensor_name_map

from services.registry.convert.base import ModelDir, OutTensor, Plan, invalid, lazy, out_qtype
from services.registry.convert.tokenizers import add_wordpiece

ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForSequenceClassification")
_SKIP = ("embeddings.position_ids", "pooler.", "cls.", "classifier.")
_HEAD = {"pooler.dense": "cls", "classifier": "cls.output"}  # sequence classification → rank pooling
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


def _head_name(name: str) -> str | None:
    stem, _, kind = name.rpartition(".")
    return f"{_HEAD[stem]}.{kind}" if stem in _HEAD and kind in ("weight", "bias") else None


def labels(md: ModelDir, n_out: int) -> list[str]:
    """The classifier's label names in output order (id2label), one per output row."""
    id2label = md.config.get("id2label")
    if isinstance(id2label, dict) and len(id2label) == n_out:
        try:
            return [str(v) for _k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))]
        except ValueError:
            pass
    return [f"LABEL_{i}" for i in range(n_out)]


def plan(md: ModelDir, outtype: str) -> Plan:
    n_layer = int(md.hparam("num_hidden_layers"))
    names = get_tensor_name_map(MODEL_ARCH.BERT, n_layer)
    archs = md.config.get("architectures") or []
    ranker = isinstance(archs, list) and "BertForSequenceClassification" in archs
    tensors: list[OutTensor] = []
    for src, ref in md.tensors.items():
        name = src.removeprefix("bert.")
        head = _head_name(name) if ranker else None
        if head is not None:
            tensors.append(OutTensor(head, ref.shape, lazy(ref), out_qtype(head, len(ref.shape), outtype)))
            continue
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
    out_rows = 0
    if ranker:
        got = {t.name for t in tensors}
        if not {"cls.weight", "cls.output.weight"} <= got:
            raise invalid("a BertForSequenceClassification needs bert.pooler.dense and classifier weights")
        out_rows = next(t.shape[0] for t in tensors if t.name == "cls.output.weight")
    pooling = PoolingType.RANK if ranker else pooling_type(md)

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
        if out_rows:
            w.add_classifier_output_labels(labels(md, out_rows))
        w.add_token_type_count(int(md.hparam("type_vocab_size", default=2)))
        add_wordpiece(w, md, vocab_rows.shape[0])

    return Plan(MODEL_ARCH_NAMES[MODEL_ARCH.BERT], write_kv, tensors)
