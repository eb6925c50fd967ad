"""Check a GGUF against its Hugging Face original: tokenizer parity and, with the `verify` extra, logits.

Tokenizer parity: the original tokenizer (transformers when installed, else sentencepiece or tokenizers)
and llama.cpp's tokenizer must give the same ids for every string of the built-in corpus. Logits parity
(transformers + torch): NMSE and top-1 agreement at every position of a few prompts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lcpp_zh.common.llama_log import route_llama_logs
from lcpp_zh.errors import ModelError
from lcpp_zh.verify.corpus import builtin_corpus

logger = logging.getLogger(__name__)

LOGIT_PROMPTS = [
    "<s>Human: 如何向一个六岁的孩子解释什么是机器学习？\n</s><s>Assistant: ",
    "The capital of France is Paris. The capital of China is",
    "北京是中国的首都，上海是最大的城市。今天天气很好，我们去公园散步吧。",
]

# Acceptable logits error by weight type: NMSE ceiling and minimum top-1 agreement.
_LOGIT_LIMITS = {"ALL_F32": (1e-5, 0.99), "MOSTLY_F16": (1e-3, 0.95), "MOSTLY_BF16": (1e-2, 0.9),
                 "MOSTLY_Q8_0": (1e-2, 0.9)}
_QUANTIZED_LIMITS = (0.2, 0.6)

Tokenize = Callable[[str], list[int]]


@dataclass
class TokenizerReport:
    reference: str
    total: int = 0
    matched: int = 0
    skipped: int = 0
    mismatches: list[tuple[str, list[int], list[int]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.matched == self.total


@dataclass
class LogitsReport:
    positions: int
    nmse: float
    top1_agreement: float
    max_nmse: float
    min_top1: float

    @property
    def ok(self) -> bool:
        return self.nmse <= self.max_nmse and self.top1_agreement >= self.min_top1


def _added_tokens(hf_dir: Path) -> list[str]:
    tokens: set[str] = set()
    added = hf_dir / "added_tokens.json"
    if added.is_file():
        tokens.update(json.loads(added.read_text(encoding="utf-8")))
    config = hf_dir / "tokenizer_config.json"
    if config.is_file():
        decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        tokens.update(entry["content"] for entry in decoder.values())
    return sorted(tokens)


def reference_tokenizer(hf_dir: Path) -> tuple[str, Tokenize, bool]:
    """(description, tokenize, understands special-token text) for the original tokenizer."""
    sentencepiece = (hf_dir / "tokenizer.model").is_file()
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(hf_dir, use_fast=not sentencepiece)
        return f"transformers {type(tok).__name__}", lambda text: tok.encode(text, add_special_tokens=False), True
    except ImportError:
        pass
    if sentencepiece:
        from sentencepiece import SentencePieceProcessor

        processor = SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
        return "sentencepiece", lambda text: processor.encode(text), False
    from tokenizers import Tokenizer

    bpe = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    return "tokenizers", lambda text: bpe.encode(text, add_special_tokens=False).ids, True


def check_tokenizer(hf_dir: Path, gguf_path: Path, strings: list[str] | None = None) -> TokenizerReport:
    """Token ids of the original tokenizer vs llama.cpp's, string by string."""
    import llama_cpp

    route_llama_logs()
    added = _added_tokens(hf_dir)
    corpus = strings if strings is not None else builtin_corpus(added)
    description, reference, knows_specials = reference_tokenizer(hf_dir)
    model = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    report = TokenizerReport(description)
    for text in corpus:
        if not knows_specials and any(token in text for token in added):
            report.skipped += 1
            continue
        ours = model.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        expected = list(reference(text))
        report.total += 1
        if ours == expected:
            report.matched += 1
        elif len(report.mismatches) < 5:
            report.mismatches.append((text, expected, ours))
    return report


def check_logits(hf_dir: Path, gguf_path: Path, file_type: str | None) -> LogitsReport | None:
    """Logits of transformers (float32) vs llama.cpp on LOGIT_PROMPTS; None without the verify extra."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return None
    transformers_logging.disable_progress_bar()  # the table is the output
    import llama_cpp

    sentencepiece = (hf_dir / "tokenizer.model").is_file()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir, use_fast=not sentencepiece)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    # An F32 KV cache: the default F16 cache alone adds ~1e-6 NMSE, which would hide converter errors.
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=512, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    errors, norms, agree, positions = 0.0, 0.0, 0, 0
    for prompt in LOGIT_PROMPTS:
        ids = tokenizer.encode(prompt, add_special_tokens=not prompt.startswith("<s>"))[:256]
        if max(ids) >= llm.n_vocab():
            raise ModelError(f"{gguf_path.name}: the original tokenizer yields token {max(ids)}, beyond the "
                             f"GGUF's {llm.n_vocab()} tokens; this GGUF is not a conversion of {hf_dir}")
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].float().numpy()
        llm.reset()
        try:
            llm.eval(ids)
        except RuntimeError as exc:
            raise ModelError(f"{gguf_path.name}: llama.cpp could not evaluate the prompt ({exc})") from None
        got = np.array(llm.scores[: len(ids)], dtype=np.float64)
        n_vocab = min(expected.shape[1], got.shape[1])
        expected, got = expected[:, :n_vocab].astype(np.float64), got[:, :n_vocab]
        errors += float(((got - expected) ** 2).sum())
        norms += float((expected**2).sum())
        agree += int((got.argmax(axis=1) == expected.argmax(axis=1)).sum())
        positions += len(ids)
    max_nmse, min_top1 = _LOGIT_LIMITS.get(file_type or "", _QUANTIZED_LIMITS)
    return LogitsReport(positions, errors / max(norms, 1e-30), agree / positions, max_nmse, min_top1)
