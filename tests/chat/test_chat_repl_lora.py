"""`/lora` in `lcpp-zh chat`, driven through a real pseudo-terminal on the tiny Chinese GGUF with a real PEFT
adapter converted to a GGUF adapter: list, rescale by name and id without reloading, clear errors. Answers
are checked against the base model (scale 0) and against the adapter merged into the weights by the
converter (the scale the chat started with)."""

from __future__ import annotations

import json
import re

import pexpect
import pytest
from lora_adapters import make_adapter
from repl_harness import PROMPT, spawn_chat

from lcpp_zh.chat.session import ChatSession
from lcpp_zh.convert.lora_adapter import convert_lora
from lcpp_zh.convert.pipeline import convert_checkpoint
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.settings import EngineSettings

QUESTION = "介绍一下北京"
START_SCALE = 0.8


@pytest.fixture(scope="module")
def adapter(tiny_zh_hf, tmp_path_factory):
    """A GGUF adapter made from a random (non-zero) PEFT adapter, and the same adapter merged at START_SCALE."""
    root = tmp_path_factory.mktemp("repl-lora")
    peft = make_adapter(tiny_zh_hf, root / "peft", r=4, alpha=8, seed=31)
    return {"gguf": convert_lora(peft, tiny_zh_hf, root / "zh-style.gguf"),
            "merged": convert_checkpoint(tiny_zh_hf, root / "merged.gguf", outtype="f32", loras=[(peft, START_SCALE)])}


def _spawn(model, env, *extra: str) -> pexpect.spawn:
    return spawn_chat(model, env, *extra, columns=200)


def _say(child: pexpect.spawn, line: str, until: str) -> str:
    child.sendline(line)
    child.expect(until)
    text = child.before + child.after
    child.expect(PROMPT)
    return text


def _ask_and_save(child: pexpect.spawn, path) -> dict:
    """Ask QUESTION in a fresh conversation and return the /save file."""
    _say(child, "/reset", "conversation cleared")
    _say(child, QUESTION, r"tokens/s")
    _say(child, f"/save {path}", "saved to")
    return json.loads(path.read_text(encoding="utf-8"))


def _listed_scale(child: pexpect.spawn) -> str:
    text = _say(child, "/lora", r"zh-style  scale \S+  \S+")
    return re.search(r"0  zh-style  scale (\S+)  ", text).group(1)


def _reference_answer(model_path, saved: dict) -> str:
    """The same conversation answered again in-process (same template and sampling) by another model."""
    with Engine(model_path, EngineSettings(n_ctx=1024, n_parallel=1, n_threads=2)) as engine:
        session = ChatSession(engine, template=saved["template"])
        session.messages = saved["messages"][:1]
        session.params = session.params.replace(**saved["params"])
        "".join(session.regen())
        return session.messages[-1]["content"]


def test_lora_list_rescale_and_errors(tiny_zh_gguf, adapter, chat_env, tmp_path):
    child = _spawn(tiny_zh_gguf, chat_env, "--lora", str(adapter["gguf"]), "--lora-scale", str(START_SCALE))
    assert "/lora scale NAME" in _say(child, "/help", r"/lora scale NAME.*\n")
    listing = _say(child, "/lora", r"zh-style.gguf")
    assert re.search(rf"0  zh-style  scale 0\.8  {re.escape(str(adapter['gguf']))}", listing)

    with_adapter = _ask_and_save(child, tmp_path / "scaled.json")
    _say(child, "/lora scale zh-style 0", r"zh-style  scale 0  ")  # by name
    assert _listed_scale(child) == "0"
    without = _ask_and_save(child, tmp_path / "off.json")
    _say(child, "/lora scale 0 1.5", r"zh-style  scale 1\.5  ")  # by id

    _say(child, "/lora scale nope 1", r"error: no LoRA adapter 'nope' \(adapters: 0:zh-style\)")
    _say(child, "/lora scale 0 abc", r"error: /lora scale: 'abc' is not a number")
    _say(child, "/lora scale 0 nan", r"error: LoRA scale must be a finite number")
    _say(child, "/lora scale 0", r"error: usage: /lora, or /lora scale NAME_OR_ID VALUE")
    assert _listed_scale(child) == "1.5"  # the refused commands changed nothing
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    answer_on, answer_off = with_adapter["messages"][1]["content"], without["messages"][1]["content"]
    assert answer_on != answer_off
    assert answer_off == _reference_answer(tiny_zh_gguf, without)  # scale 0: the base model's greedy answer
    assert answer_on == _reference_answer(adapter["merged"], with_adapter)  # the adapter merged at 0.8


def test_lora_without_adapters(tiny_zh_gguf, chat_env):
    child = _spawn(tiny_zh_gguf, chat_env)
    _say(child, "/lora", r"no LoRA adapters loaded; start the chat with --lora ADAPTER\.gguf")
    _say(child, "/lora scale 0 1", r"error: no LoRA adapters are loaded")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
