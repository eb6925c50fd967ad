"""Chat templates: golden renderings of the built-in formats, token ids against transformers' tokenizers,
the GGUF's own template (auto), BOS/EOS as control tokens with no doubled BOS, and bad templates."""

from __future__ import annotations

import pytest

from lcpp_zh.errors import TemplateError
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.templates import (
    BUILTIN_TEMPLATES,
    EXAMPLE_CONVERSATION,
    ChatTemplate,
    choose_template,
    detect_template_name,
    get_template,
    load_template_file,
    render_chat,
    resolve_template,
)

CONV = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
]

# Written from the formats' own documentation (Llama-Chinese README, Meta's llama/generation.py, ChatML,
# Stanford Alpaca, FastChat vicuna_v1.1), not from our output.
GOLDEN = {
    "llama2-chinese": "<s>System: SYS\n</s><s>Human: Q1\n</s><s>Assistant: A1\n</s><s>Human: Q2\n</s><s>Assistant: ",
    "llama2": "<s>[INST] <<SYS>>\nSYS\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]",
    "chatml": "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
              "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n",
    "alpaca": "<s>SYS\n\n### Instruction:\nQ1\n\n### Response:\nA1\n\n### Instruction:\nQ2\n\n### Response:\n",
    "vicuna": "<s>SYS USER: Q1 ASSISTANT: A1</s> USER: Q2 ASSISTANT:",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_builtin_golden(name):
    text = get_template(name).render_text(CONV, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    assert text == GOLDEN[name]


def test_all_builtins_have_golden_strings():
    assert set(BUILTIN_TEMPLATES) == set(GOLDEN)


def test_llama2_chinese_single_turn_matches_readme():
    text = get_template("llama2-chinese").render_text([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                                      bos_token="<s>", eos_token="</s>")
    assert text == "<s>Human: 你好\n</s><s>Assistant: "
    assert set(get_template("llama2-chinese").stops) >= {"Human:"}


def test_detect_by_model_name():
    assert detect_template_name("FlagAlpha/Atom-7B-Chat") == "llama2-chinese"
    assert detect_template_name("FlagAlpha/Llama2-Chinese-13b-Chat") == "llama2-chinese"
    assert detect_template_name("meta-llama/Llama-2-7b-chat-hf") is None


@pytest.fixture(scope="module")
def tiny_engine(tiny_zh_gguf):
    engine = Engine(tiny_zh_gguf, EngineSettings(n_ctx=512, n_parallel=1, n_threads=1))
    yield engine
    engine.close()


def test_llama2_chinese_tokens_match_transformers(tiny_engine, tiny_zh_hf):
    """<s>/</s> become BOS/EOS ids exactly where the Atom tokenizer (add_special_tokens=False) puts them."""
    from transformers import AutoTokenizer

    rendered = render_chat(tiny_engine, EXAMPLE_CONVERSATION, "llama2-chinese")
    reference = AutoTokenizer.from_pretrained(str(tiny_zh_hf), use_fast=False)
    expected = reference(rendered.text, add_special_tokens=False).input_ids
    assert rendered.tokens == expected
    bos, eos = tiny_engine.bos_id, tiny_engine.eos_id
    assert rendered.tokens[:1] == [bos] and rendered.tokens[1] != bos  # one BOS, not two
    assert rendered.tokens.count(bos) == 5 and rendered.tokens.count(eos) == 4
    assert "<s>" not in tiny_engine.detokenize(rendered.tokens)  # control tokens, not the literal text


def test_auto_uses_the_gguf_template(tiny_engine):
    # The converter embedded the llama2-chinese source into the tiny Atom GGUF; auto recognises it.
    assert render_chat(tiny_engine, CONV).template == "llama2-chinese"


def test_auto_on_smollm2_matches_transformers(smollm2_gguf, smollm2_hf):
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "What is 2+2?"}]
    with Engine(smollm2_gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=1)) as engine:
        rendered = render_chat(engine, messages)
        expected_text = AutoTokenizer.from_pretrained(str(smollm2_hf)).apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
        assert rendered.template == "gguf"
        assert rendered.text == expected_text
        assert rendered.tokens[0] == engine.tokenize("<|im_start|>", add_bos=False)[0]
        assert "<|im_end|>" in rendered.stops


def test_no_doubled_bos_when_template_writes_it(tiny_engine):
    text = "<s>Human: hi\n</s><s>Assistant: "
    tokens = tiny_engine.tokenize(text, add_bos=True, special=True)
    assert tokens[0] == tiny_engine.bos_id and tokens[1] != tiny_engine.bos_id


def test_bos_goes_in_front_of_content_that_spells_it(tiny_engine):
    """A template that writes no BOS gets one in front; a content starting with `<s>` is text, not a BOS."""
    bare = ChatTemplate("bare", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    rendered = render_chat(tiny_engine, [{"role": "user", "content": "<s>hi</s>"}], bare)
    assert rendered.tokens[0] == tiny_engine.bos_id and rendered.tokens.count(tiny_engine.bos_id) == 1
    assert tiny_engine.eos_id not in rendered.tokens and "<s>hi</s>" in tiny_engine.detokenize(rendered.tokens)


def test_unknown_template_is_an_error():
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        resolve_template("nope")


def test_template_file(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}<|im_start|>{{ m['content'] }}{% endfor %}", encoding="utf-8")
    template = load_template_file(path)
    assert template.render_text([{"role": "user", "content": "x"}], add_generation_prompt=False,
                                bos_token="", eos_token="") == "<|im_start|>x"
    assert "<|im_end|>" in template.stops
    path.write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(TemplateError, match="not a valid Jinja template"):
        load_template_file(path)


def test_the_command_lines_template_choice(tmp_path):
    """One choice for chat, generate and serve: --template-file, else --template, else the seed's --model_source
    (its mapping is the seed's README's), else None for auto; an unknown name fails before any model loads."""
    path = tmp_path / "mine.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}", encoding="utf-8")
    assert choose_template() is None and choose_template("auto") is None
    assert choose_template("chatml") == "chatml"
    assert choose_template(None, model_source="llama2_chinese") == "llama2-chinese"
    assert choose_template("auto", model_source="llama2_meta") == "llama2"
    assert choose_template("chatml", model_source="llama2_meta") == "chatml"
    chosen = choose_template("chatml", path, "llama2_meta")
    assert isinstance(chosen, ChatTemplate) and chosen.name == "mine.jinja"
    with pytest.raises(TemplateError, match="unknown template 'nope'"):
        choose_template("nope")
    with pytest.raises(TemplateError, match="unknown model source 'gpt'"):
        choose_template(None, model_source="gpt")


def test_template_sandbox_blocks_attribute_escape(tmp_path):
    path = tmp_path / "evil.jinja"
    path.write_text("{{ messages.__class__.__mro__[1].__subclasses__() }}", encoding="utf-8")
    with pytest.raises(TemplateError):
        load_template_file(path).render_text(CONV, add_generation_prompt=True, bos_token="", eos_token="")


def test_bad_messages_are_errors():
    with pytest.raises(TemplateError, match="role"):
        get_template("chatml").render_text([{"role": "robot", "content": "x"}], add_generation_prompt=True,
                                           bos_token="", eos_token="")


def test_templates_command_lists_and_renders(run_cli):
    result = run_cli("templates")
    assert result.returncode == 0, result.stderr
    for name in BUILTIN_TEMPLATES:
        assert f"== {name}" in result.stdout
    assert "<s>Human: 介绍一下北京。\n</s>" in result.stdout


def test_generate_prompt_is_the_seeds_demo_prompt(tiny_engine, tiny_zh_hf):
    """`lcpp-zh generate MODEL QUESTION` sends exactly the seed's transformers demo input_ids."""
    from transformers import AutoTokenizer

    from lcpp_zh.chat.generate import build_prompt

    question = "如何向一个六岁的孩子解释什么是机器学习？"
    seed_text = "<s>Human: 如何向一个六岁的孩子解释什么是机器学习？\n</s><s>Assistant: "  # the seed's literal
    tokens, stops, text, name = build_prompt(tiny_engine, question)
    assert (text, name) == (seed_text, "llama2-chinese") and "Human:" in stops
    seed_tokenizer = AutoTokenizer.from_pretrained(str(tiny_zh_hf), use_fast=False)  # as in the seed
    assert tokens == seed_tokenizer([seed_text], add_special_tokens=False).input_ids[0]
