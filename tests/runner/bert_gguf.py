"""A tiny BERT-architecture embedding model (WordPiece vocabulary, random f32 weights).

The shapes follow llama.cpp's LLM_ARCH_BERT loader; the vocabulary follows what
convert_hf_to_gguf writes for BERT (word-initial pieces get "▁", "##" pieces
lose it), so llama.cpp's WPM tokenizer runs on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType, PoolingType, TokenType

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["hello", "world", "the", "sky", "is", "blue", "sea", "cat", "dog", "a", "red", "green", ".", ",", "!"]
PIECES = ["s", "ing", "ed"]  # "##s" etc. in the HF vocabulary


def write_tiny_bert(
    path: Path,
    *,
    pooling: PoolingType = PoolingType.MEAN,
    n_embd: int = 32,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 64,
    context_length: int = 128,
    seed: int = 0,
    classifier: bool = False,
    extra_kv: dict[str, str] | None = None,
) -> Path:
    """`classifier=True` adds a cross-encoder's head (`cls`, `cls.output`, one label) as
    convert_hf_to_gguf writes BertForSequenceClassification; use it with PoolingType.RANK."""
    rng = np.random.default_rng(seed)
    tokens = SPECIAL + ["▁" + w for w in WORDS] + PIECES
    types = [TokenType.CONTROL] * len(SPECIAL) + [TokenType.NORMAL] * (len(WORDS) + len(PIECES))
    types[1] = TokenType.UNKNOWN
    n_vocab = len(tokens)
    shapes: dict[str, tuple[int, ...]] = {  # numpy order: GGUF dims reversed
        "token_embd.weight": (n_vocab, n_embd),
        "token_types.weight": (2, n_embd),
        "position_embd.weight": (context_length, n_embd),
        "token_embd_norm.weight": (n_embd,),
        "token_embd_norm.bias": (n_embd,),
    }
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            shapes |= {f"blk.{i}.{name}.weight": (n_embd, n_embd), f"blk.{i}.{name}.bias": (n_embd,)}
        for name in ("attn_output_norm", "layer_output_norm"):
            shapes |= {f"blk.{i}.{name}.weight": (n_embd,), f"blk.{i}.{name}.bias": (n_embd,)}
        shapes |= {
            f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
            f"blk.{i}.ffn_up.bias": (n_ff,),
            f"blk.{i}.ffn_down.weight": (n_embd, n_ff),
            f"blk.{i}.ffn_down.bias": (n_embd,),
        }

    if classifier:
        shapes |= {"cls.weight": (n_embd, n_embd), "cls.bias": (n_embd,), "cls.output.weight": (1, n_embd)}
        shapes |= {"cls.output.bias": (1,)}

    w = GGUFWriter(path, "bert")
    w.add_name("tiny-bert")
    w.add_file_type(LlamaFileType.ALL_F32)
    w.add_context_length(context_length)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(pooling)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([int(t) for t in types])
    w.add_token_type_count(2)
    w.add_unk_token_id(1)
    w.add_bos_token_id(2)  # [CLS]
    w.add_sep_token_id(3)
    w.add_eos_token_id(3)
    w.add_pad_token_id(0)
    w.add_mask_token_id(4)
    w.add_add_bos_token(True)
    w.add_add_eos_token(True)
    if classifier:
        # What gguf's SpecialVocab writes for BERT's "[CLS] $A [SEP] $B [SEP]" pair template.
        w.add_add_sep_token(False)
    for key, value in (extra_kv or {}).items():
        w.add_string(key, value)
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            data = np.ones(shape, dtype=np.float32)
        elif name.startswith("cls.") and name.endswith(".bias"):
            data = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        elif name.endswith(".bias"):
            data = np.zeros(shape, dtype=np.float32)
        else:
            data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
