"""Tokenizer parity: the checkpoint's own tokenizer and llama.cpp's tokenizer on our GGUF give the same ids.

Over 1,100 fixed strings (Chinese, English, mixed, emoji, whitespace runs, special-token text and the
added tokens): transformers' slow LlamaTokenizer and sentencepiece itself for the tiny Chinese Llama,
tokenizer.json (tokenizers) for SmolLM2. Also the embedded chat template and `lcpp-zh verify`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fixtures.tiny_llama import ADDED_NORMAL, ADDED_SPECIAL
from fixtures.tokenizer_strings import parity_strings
from lcpp_zh.convert.pipeline import convert_checkpoint

STRINGS = parity_strings()
CONVERSATION = [
    {"role": "system", "content": "你是一个助手。"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好！"},
    {"role": "user", "content": "再见"},
]


def _vocab_only(gguf_path: Path):
    from llama_cpp import Llama

    return Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)


def _mismatches(expected_fn, got_fn, strings: list[str]) -> list[str]:
    bad = []
    for text in strings:
        expected, got = expected_fn(text), got_fn(text)
        if expected != got:
            bad.append(f"{text!r}: original {expected} != llama.cpp {got}")
    return bad


def _report(bad: list[str], total: int) -> str:
    return f"{len(bad)} of {total} strings differ:\n" + "\n".join(bad[:20])


@pytest.fixture(scope="module")
def tiny_vocab(tiny_zh_gguf):
    model = _vocab_only(tiny_zh_gguf)
    yield model
    model.close()


def test_corpus_is_big_and_covers_added_tokens():
    assert len(STRINGS) >= 1000
    assert sum(ADDED_SPECIAL in s for s in STRINGS) >= 10
    assert sum(ADDED_NORMAL in s for s in STRINGS) >= 10
    assert any("😀" in s for s in STRINGS) and any("   " in s for s in STRINGS)


def test_tiny_matches_transformers_slow_tokenizer(tiny_zh_hf, tiny_vocab):
    """With BOS and special-token parsing on both sides, as transformers' encode() does by default."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(tiny_zh_hf))
    assert len(tok) == 1202  # 1200 pieces + the two added tokens

    def llama_cpp(text: str) -> list[int]:
        return tiny_vocab.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    bad = _mismatches(tok.encode, llama_cpp, STRINGS)
    assert not bad, _report(bad, len(STRINGS))


def test_tiny_matches_sentencepiece(tiny_zh_hf, tiny_vocab):
    """Plain text (no special or added tokens) against the SentencePiece model itself, no BOS."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_zh_hf / "tokenizer.model"))
    markers = ("<s>", "</s>", "<unk>", ADDED_SPECIAL, ADDED_NORMAL)
    plain = [s for s in STRINGS if not any(m in s for m in markers)]
    assert len(plain) >= 500

    def llama_cpp(text: str) -> list[int]:
        return tiny_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    bad = _mismatches(sp.encode, llama_cpp, plain)
    assert not bad, _report(bad, len(plain))


def test_tiny_detokenizes_back_to_text(tiny_zh_hf, tiny_vocab):
    """Byte-fallback pieces of rare characters and emoji come back as the same UTF-8 text."""
    texts = ["龘靐齉爩 是生僻字", "表情 😀🦙🚀", "中文和English混合 123"]
    for text in texts:
        ids = tiny_vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert tiny_vocab.detokenize(ids).decode("utf-8").strip() == text


@pytest.mark.slow
def test_smollm2_matches_tokenizer_json(smollm2_hf, converted):
    from tokenizers import Tokenizer

    out = converted(smollm2_hf, "f16")
    tok = Tokenizer.from_file(str(smollm2_hf / "tokenizer.json"))
    model = _vocab_only(out)
    try:
        def llama_cpp(text: str) -> list[int]:
            # add_bos=True lets the GGUF's own add_bos_token flag decide (False for SmolLM2).
            return model.tokenize(text.encode("utf-8"), add_bos=True, special=True)

        bad = _mismatches(lambda t: tok.encode(t, add_special_tokens=True).ids, llama_cpp, STRINGS)
    finally:
        model.close()
    assert not bad, _report(bad, len(STRINGS))


def test_tiny_embeds_the_atom_chat_template(tiny_zh_gguf):
    """Atom ships no template: ours embeds its `<s>Human: ...\\n</s><s>Assistant: ` format."""
    from gguf import GGUFReader
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    field = GGUFReader(str(tiny_zh_gguf)).fields.get("tokenizer.chat_template")
    assert field is not None, "no tokenizer.chat_template: llama.cpp tools would fall back to ChatML"
    formatter = Jinja2ChatFormatter(template=field.contents(), eos_token="</s>", bos_token="<s>")
    one = formatter(messages=[{"role": "user", "content": "如何向一个六岁的孩子解释什么是机器学习？"}])
    assert one.prompt == "<s>Human: 如何向一个六岁的孩子解释什么是机器学习？\n</s><s>Assistant: "
    multi = formatter(messages=CONVERSATION)
    assert multi.prompt == ("<s>System: 你是一个助手。\n</s><s>Human: 你好\n</s><s>Assistant: 你好！\n</s>"
                            "<s>Human: 再见\n</s><s>Assistant: ")


def _render(gguf_path: Path, messages: list[dict]) -> str | None:
    """Render the GGUF's embedded template the way llama-cpp-python does (None when there is none)."""
    from gguf import GGUFReader
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return Jinja2ChatFormatter(template=field.contents(), eos_token="</s>", bos_token="<s>")(messages=messages).prompt


def _plain_llama(tiny_zh_hf: Path, dest: Path) -> Path:
    """A copy of the tiny checkpoint with nothing in it that names FlagAlpha/Atom."""
    shutil.copytree(tiny_zh_hf, dest)
    config = json.loads((dest / "config.json").read_text(encoding="utf-8"))
    config.pop("_name_or_path", None)
    config.pop("auto_map", None)
    (dest / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return dest


def test_llama2_chinese_recognised_by_folder_name(tiny_zh_hf, tmp_path):
    hf = _plain_llama(tiny_zh_hf, tmp_path / "Llama2-Chinese-7b-Chat")
    out = Path(convert_checkpoint(hf, tmp_path / "a.gguf", outtype="f16"))
    assert _render(out, CONVERSATION[1:2]) == "<s>Human: 你好\n</s><s>Assistant: "


def test_unrecognised_model_gets_no_template(tiny_zh_hf, tmp_path):
    """Like llama.cpp's converter: no template in the checkpoint and no known family -> none written."""
    hf = _plain_llama(tiny_zh_hf, tmp_path / "some-llama")
    out = Path(convert_checkpoint(hf, tmp_path / "a.gguf", outtype="f16"))
    assert _render(out, CONVERSATION) is None


def test_template_none_embeds_nothing(tiny_zh_hf, tmp_path):
    out = Path(convert_checkpoint(tiny_zh_hf, tmp_path / "a.gguf", outtype="f16", template="none"))
    assert _render(out, CONVERSATION) is None


def test_template_llama2_is_metas_format(run_cli, tiny_zh_hf, tmp_path):
    """--template llama2: Meta's canonical Llama 2 chat format (REFERENCE.md), through the CLI."""
    out = tmp_path / "a.gguf"
    proc = run_cli("convert", tiny_zh_hf, "-o", out, "--outtype", "f16", "--template", "llama2", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _render(out, CONVERSATION) == (
        "<s>[INST] <<SYS>>\n你是一个助手。\n<</SYS>>\n\n你好 [/INST] 你好！ </s><s>[INST] 再见 [/INST]"
    )


def test_template_override_replaces_the_models_own(smollm2_hf, tmp_path):
    """--template chooses even when the checkpoint ships a template (SmolLM2's ChatML with a system line)."""
    out = Path(convert_checkpoint(smollm2_hf, tmp_path / "s.gguf", outtype="f16", template="llama2-chinese"))
    assert _render(out, CONVERSATION[1:2]) == "<s>Human: 你好\n</s><s>Assistant: "


def test_verify_passes_on_a_good_conversion(run_cli, tiny_zh_hf, tiny_zh_gguf):
    proc = run_cli("verify", tiny_zh_hf, tiny_zh_gguf)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_fails_when_weights_differ(run_cli, tiny_llama, tiny_zh_gguf):
    """Same tokenizer, other random weights: only the logits check can catch it."""
    other = tiny_llama(seed=99)
    proc = run_cli("verify", other, tiny_zh_gguf)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_no_logits_checks_the_tokenizer_only(run_cli, tiny_llama, tiny_zh_gguf):
    """--no-logits needs no verify extra and says why the logits were skipped: other weights pass."""
    proc = run_cli("verify", tiny_llama(seed=99), tiny_zh_gguf, "--no-logits")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped (--no-logits)" in proc.stdout and "verify extra" not in proc.stdout, proc.stdout


def test_verify_fails_when_tokenizers_differ(run_cli, tiny_zh_hf, tiny_zh_gguf, tmp_path):
    """The HF side tokenizes text after special tokens differently (legacy=False): a tokenizer mismatch."""
    hf = tmp_path / "hf"
    shutil.copytree(tiny_zh_hf, hf)
    config_path = hf / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["legacy"] = False
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    proc = run_cli("verify", hf, tiny_zh_gguf)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_fails_against_the_wrong_checkpoint(run_cli, smollm2_hf, tiny_zh_gguf):
    proc = run_cli("verify", smollm2_hf, tiny_zh_gguf)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
