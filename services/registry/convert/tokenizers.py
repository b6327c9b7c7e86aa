"""Tokenizer metadata: WordPiece (BERT), byte-level BPE (GPT-2 style) and SentencePiece-style BPE.

Token lists come from tokenizer.json (vocab.txt for WordPiece without one);
special-token ids, add_bos/add_eos, merges and the chat template come from
gguf.SpecialVocab, which reads tokenizer.json, tokenizer_config.json and
config.json the way convert_hf_to_gguf does.
"""

from __future__ import annotations

import logging
from typing import Any

from gguf import GGUFWriter, SpecialVocab, TokenType

from services.registry.convert.base import ModelDir, invalid

log = logging.getLogger(__name__)

# Pre-tokenizer regexes llama.cpp knows by name (llama-vocab.cpp); convert_hf_to_gguf
# recognises them by hashing a tokenization, which needs transformers: we compare the regex.
_PRE_BY_REGEX = {
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}


def _vocab_list(vocab: dict[str, int], added: list[dict[str, Any]], size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, padded to `size` with unused pieces, and their types."""
    by_id: dict[int, tuple[str, TokenType]] = {i: (t, TokenType.NORMAL) for t, i in vocab.items()}
    for item in added:
        kind = TokenType.CONTROL if item.get("special") else TokenType.USER_DEFINED
        by_id[int(item["id"])] = (str(item["content"]), kind)
    size = max(size, max(by_id, default=-1) + 1)
    if size > 4_000_000:
        raise invalid("the vocabulary is too large")
    tokens, types = [], []
    for i in range(size):
        text, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return tokens, types


def _tokenizer_json(md: ModelDir) -> dict[str, Any]:
    tok = md.json("tokenizer.json")
    if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
        raise invalid("tokenizer.json is missing or has no model (tokenizer.model alone is not supported)")
    return tok


def add_wordpiece(w: GGUFWriter, md: ModelDir, n_vocab: int) -> None:
    """BERT's vocabulary in llama.cpp's phantom-space form: words get "▁", "##" pieces lose it."""
    tok = md.json("tokenizer.json")
    if isinstance(tok, dict) and isinstance(tok.get("model"), dict) and tok["model"].get("type") == "WordPiece":
        tokens, types = _vocab_list(tok["model"].get("vocab", {}), tok.get("added_tokens", []), n_vocab)
    else:
        vocab_txt = md.path / "vocab.txt"
        if not vocab_txt.is_file():
            raise invalid("a WordPiece tokenizer.json or vocab.txt is required")
        words = vocab_txt.read_text(encoding="utf-8").splitlines()
        tokens, types = _vocab_list({t: i for i, t in enumerate(words)}, [], n_vocab)
        bracketed = [t.startswith("[") and t.endswith("]") for t in tokens]
        types = [int(TokenType.CONTROL) if b else k for b, k in zip(bracketed, types, strict=True)]

    def phantom(t: str) -> str:
        if t.startswith("[") and t.endswith("]"):
            return t
        return t[2:] if t.startswith("##") else "\u2581" + t

    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list([phantom(t) for t in tokens])
    w.add_token_types(types)
    SpecialVocab(md.path, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)


def add_bpe(w: GGUFWriter, md: ModelDir, n_vocab: int) -> None:
    """Byte-level BPE (Llama 3, Qwen2, Mistral Nemo …) as "gpt2", or byte-fallback BPE as "llama"."""
    tok = _tokenizer_json(md)
    model = tok["model"]
    if model.get("type") != "BPE":
        raise invalid(f"unsupported tokenizer type {model.get('type')!r}")
    tokens, types = _vocab_list(model.get("vocab", {}), tok.get("added_tokens", []), n_vocab)
    if model.get("byte_fallback"):
        _add_spm_style(w, tokens, types)
    else:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(_pre_tokenizer(tok))
        w.add_token_list(tokens)
        w.add_token_types(types)
    SpecialVocab(md.path, load_merges=not model.get("byte_fallback"), n_vocab=len(tokens)).add_to_gguf(w, quiet=True)


def _add_spm_style(w: GGUFWriter, tokens: list[str], types: list[int]) -> None:
    # Llama 2 / Mistral tokenizer.json: SentencePiece pieces with <0xXX> byte fallback.
    # llama.cpp's SPM tokenizer merges by score; vocabulary order is merge order here.
    scores = []
    for i, t in enumerate(tokens):
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            types[i] = int(TokenType.BYTE)
        elif t == "<unk>":
            types[i] = int(TokenType.UNKNOWN)
        scores.append(0.0 if types[i] != TokenType.NORMAL else -float(i))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)


def _pre_tokenizer(tok: dict[str, Any]) -> str:
    pre = tok.get("pre_tokenizer") or {}
    for item in pre.get("pretokenizers", [pre]):
        regex = (item.get("pattern") or {}).get("Regex") if isinstance(item, dict) else None
        if regex in _PRE_BY_REGEX:
            return _PRE_BY_REGEX[regex]
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    log.warning("unrecognised pre-tokenizer; using llama.cpp's default")
    return "default"
