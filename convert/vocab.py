"""Write a checkpoint's tokenizer as GGUF `tokenizer.ggml.*` keys, without transformers.

SentencePiece (`tokenizer.model`, the Llama 2 / Atom case) is read with sentencepiece, a SentencePiece-style
tokenizer.json without it by vocab_llama_hf; byte-level BPE (`tokenizer.json`, Llama 3 / SmolLM2) with the
`tokenizers` library. Token texts, scores and types follow
llama.cpp's converter rule for rule; special ids, add_bos/add_eos, merges and the chat template come from
gguf-py's SpecialVocab, the same code the reference uses.
"""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from lcpp_zh.convert.bpe_pre import pre_tokenizer_name
from lcpp_zh.convert.vocab_llama_hf import is_llama_hf_tokenizer, llama_hf_vocab
from lcpp_zh.errors import TokenizerError

logger = logging.getLogger(__name__)

# SentencePiece piece types as llama.cpp numbers them (same values as gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPIECE_UNDERLINE = "\u2581"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"{path}: not valid JSON ({exc})") from None


def looks_special(text: str) -> bool:
    """Added tokens that some models forget to mark special (llama.cpp's does_token_look_special)."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def sentencepiece_vocab(directory: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Pieces, scores and types of tokenizer.model, padded to the config's vocab size, with added tokens."""
    from sentencepiece import SentencePieceProcessor

    processor = SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(directory / "tokenizer.model"))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{directory / 'tokenizer.model'}: not a SentencePiece model ({exc})") from None
    n_pieces = processor.vocab_size()
    if n_pieces > vocab_size:
        raise TokenizerError(
            f"config.json: vocab_size {vocab_size} is smaller than the tokenizer's {n_pieces} pieces; "
            "the embedding matrix cannot hold them (wrong tokenizer.model for these weights?)"
        )
    # Ids the tokenizer does not use get llama.cpp's padding entries.
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [UNUSED] * vocab_size
    for i in range(n_pieces):
        tokens[i] = processor.IdToPiece(i).encode("utf-8")
        scores[i] = processor.GetScore(i)
        types[i] = (UNKNOWN if processor.IsUnknown(i) else CONTROL if processor.IsControl(i)
                    else UNUSED if processor.IsUnused(i) else BYTE if processor.IsByte(i) else NORMAL)
    for text, token_id in _read_json(directory / "added_tokens.json").items():
        if token_id >= vocab_size:
            raise TokenizerError(f"added_tokens.json: token {text!r} has id {token_id} beyond vocab_size {vocab_size}")
        tokens[token_id], scores[token_id], types[token_id] = text.encode("utf-8"), -1000.0, USER_DEFINED
    decoder = _read_json(directory / "tokenizer_config.json").get("added_tokens_decoder", {})
    for key, data in decoder.items():
        token_id, text = int(key), data["content"]
        if token_id >= vocab_size:
            raise TokenizerError(f"tokenizer_config.json: token {text!r} has id {token_id} beyond vocab_size {vocab_size}")
        if data.get("special") or looks_special(text):
            types[token_id] = CONTROL
        else:
            text = text.replace(_SPIECE_UNDERLINE, " ")  # llama.cpp expects user-defined tokens pre-normalized
            types[token_id] = USER_DEFINED
        scores[token_id], tokens[token_id] = -1000.0, text.encode("utf-8")
    return tokens, scores, types


def bpe_vocab(directory: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    """Token texts, types and the pre-tokenizer name of a byte-level BPE tokenizer.json."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # the Rust side raises plain Exception
        raise TokenizerError(f"{directory / 'tokenizer.json'}: unreadable ({exc})") from None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if vocab and max(vocab.values()) >= vocab_size:
        raise TokenizerError(
            f"config.json: vocab_size {vocab_size} is smaller than the tokenizer's {max(vocab.values()) + 1} tokens"
        )
    added = tokenizer.get_added_tokens_decoder()
    reverse = {i: text for text, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        text = reverse[i]
        if i in added:
            if not added[i].normalized:
                # llama.cpp assumes CONTROL and USER_DEFINED texts are normalized: round-trip them.
                text = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
            if added[i].special or looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace(_SPIECE_UNDERLINE, " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(text)
    checksum = sha256(str(tokenizer.encode(_PRE_TOKENIZER_PROBE).ids).encode()).hexdigest()
    return tokens, types, pre_tokenizer_name(checksum)


# The probe text llama.cpp hashes to recognise a BPE pre-tokenizer (convert_hf_to_gguf_update.py's chktxt).
_PRE_TOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


def add_vocab(writer: gguf.GGUFWriter, directory: Path, vocab_size: int, chat_template: str | None,
              replace_template: bool = False) -> None:
    """The tokenizer keys. `chat_template` fills in for a checkpoint without a template of its own, or
    replaces the checkpoint's when `replace_template` (the user chose a template by name)."""
    tokenizer_config = _read_json(directory / "tokenizer_config.json")
    if (add_prefix_space := tokenizer_config.get("add_prefix_space")) is not None:
        writer.add_add_space_prefix(add_prefix_space)
    if (directory / "tokenizer.model").is_file():
        special = _add_llama_vocab(writer, directory, *sentencepiece_vocab(directory, vocab_size))
    elif is_llama_hf_tokenizer(directory):
        # No tokenizer.model but a SentencePiece-style tokenizer.json: llama.cpp's converter takes its Hugging
        # Face vocabulary path (same keys, every score -1000, no padding to vocab_size).
        special = _add_llama_vocab(writer, directory, *llama_hf_vocab(directory, vocab_size))
    elif (directory / "tokenizer.json").is_file():
        _refuse_sentencepiece_json(directory)
        texts, types, pre = bpe_vocab(directory, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(texts)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(directory, load_merges=True)
    else:
        raise TokenizerError(f"{directory}: no tokenizer (expected tokenizer.model or tokenizer.json)")
    if chat_template is not None and (replace_template or special.chat_template is None):
        special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)
    if vocab_size == 49152:
        # llama.cpp's converter turns BOS off for vocabularies of this size (Granite small models).
        writer.add_add_bos_token(False)


def _add_llama_vocab(writer: gguf.GGUFWriter, directory: Path, tokens: list[bytes], scores: list[float],
                     types: list[int]) -> gguf.SpecialVocab:
    """The SentencePiece ("llama") tokenizer keys; returns the special vocabulary still to be added."""
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    return gguf.SpecialVocab(directory, n_vocab=len(tokens))


def _refuse_sentencepiece_json(directory: Path) -> None:
    """A byte-fallback BPE tokenizer.json without the ▁ decoder of the Hugging Face Llama path is neither
    SentencePiece-style nor byte-level: refuse rather than guess (its tokenizer.model would settle it)."""
    model = _read_json(directory / "tokenizer.json").get("model", {})
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        raise TokenizerError(
            f"{directory}: this tokenizer.json uses byte fallback but not the SentencePiece-style decoder; "
            "put the model's tokenizer.model next to it"
        )
