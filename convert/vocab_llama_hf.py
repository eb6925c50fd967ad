"""A SentencePiece-style vocabulary that comes only as tokenizer.json (BPE with byte fallback and a ▁
decoder, no tokenizer.model): llama.cpp's Hugging Face vocabulary path (gguf-py's LlamaHfVocab), rule for rule.

Read with the `tokenizers` library and the tokenizer's JSON files, without transformers: token texts in id
order, score -1000 for every token (llama.cpp's converter has no scores to take from tokenizer.json),
BYTE for <0xXX> pieces, CONTROL for transformers' special tokens, USER_DEFINED for other added tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lcpp_zh.errors import TokenizerError

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6  # gguf.TokenType values
SCORE = -1000.0  # LlamaHfVocab.get_token_score: the same placeholder for every token
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
# transformers' SPECIAL_TOKENS_ATTRIBUTES: the tokens its `all_special_tokens` lists.
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# LlamaTokenizerFast's constructor defaults, used when neither tokenizer file names these tokens.
_LLAMA_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def is_llama_hf_tokenizer(directory: Path) -> bool:
    """tokenizer.json is a SentencePiece-style BPE (byte fallback, a Sequence decoder): LlamaHfVocab's test."""
    data = _read_json(directory / "tokenizer.json")
    model = data.get("model") or {}
    return (model.get("type") == "BPE" and bool(model.get("byte_fallback", False))
            and (data.get("decoder") or {}).get("type") == "Sequence")


def _content(value: Any) -> str | None:
    return value.get("content") if isinstance(value, dict) else value


def special_token_texts(directory: Path) -> list[str]:
    """transformers' `all_special_tokens` for this folder: tokenizer_config.json's special tokens,
    overridden by special_tokens_map.json, with LlamaTokenizerFast's defaults for bos/eos/unk."""
    config = _read_json(directory / "tokenizer_config.json")
    merged = {**config, **_read_json(directory / "special_tokens_map.json")}
    if config.get("tokenizer_class") in (None, "LlamaTokenizer", "LlamaTokenizerFast"):
        merged = {**_LLAMA_DEFAULTS, **merged}
    texts = [_content(merged.get(key)) for key in _SPECIAL_KEYS]
    texts += [_content(v) for v in merged.get("additional_special_tokens") or []]
    return list(dict.fromkeys(t for t in texts if t))


def llama_hf_vocab(directory: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Texts, scores and types of a tokenizer.json-only SentencePiece vocabulary. Not padded to the
    config's vocab_size: llama.cpp's converter writes exactly the tokenizer's tokens on this path."""
    from tokenizers import Tokenizer

    path = directory / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception
        raise TokenizerError(f"{path}: unreadable ({exc})") from None
    n_base = tokenizer.get_vocab_size(with_added_tokens=False)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    reverse = {i: text for text, i in vocab.items()}
    specials = special_token_texts(directory)
    missing = [t for t in specials if t not in vocab]
    if missing:
        # transformers would append them as new tokens at load time; the weights have no rows for them.
        raise TokenizerError(f"{directory}: special token(s) {', '.join(missing)} of tokenizer_config.json / "
                             "special_tokens_map.json are not in tokenizer.json")
    special_ids = {vocab[t] for t in specials}
    added = sorted((i, t.content) for i, t in tokenizer.get_added_tokens_decoder().items() if i >= n_base)
    if [i for i, _ in added] != list(range(n_base, n_base + len(added))) or any(i not in reverse for i in range(n_base)):
        raise TokenizerError(f"{path}: token ids are not contiguous; the vocabulary cannot be written in id order")
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(n_base):
        text = reverse[i]
        tokens.append(text.encode("utf-8"))
        types.append(BYTE if _BYTE_PIECE.fullmatch(text) else CONTROL if i in special_ids else NORMAL)
    for _, text in added:
        tokens.append(text.encode("utf-8"))
        types.append(CONTROL if text in specials else USER_DEFINED)
    if len(tokens) > vocab_size:
        raise TokenizerError(f"config.json: vocab_size {vocab_size} is smaller than the tokenizer's {len(tokens)} "
                             "tokens; the embedding matrix cannot hold them (wrong tokenizer.json for these weights?)")
    return tokens, [SCORE] * len(tokens), types
