"""`lcpp-zh chat` driven as a person would: a real pseudo-terminal (pexpect) running the installed command on
SmolLM2-135M-Instruct: type, read the streamed answer, Ctrl-C, Ctrl-D, slash commands, history across runs;
the conversation kept whole through over-long messages, a full context, empty and failed answers, bad
/load files and /save errors; escape sequences in answers kept off the terminal; plus piped stdin and
display-width wrapping."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pexpect
from conftest import lcpp_zh_command
from repl_harness import (
    INPUT_DONE,
    PROMPT,
    STATS,
    gbnf_literal,
    paste,
    reply,
    reply_lines,
    roles,
    saved_conversation,
    spawn_chat,
    visible,
)
from repl_harness import say as _say

from lcpp_zh.chat.wrap import StreamWrapper, char_width

_spawn = spawn_chat


def test_conversation_commands_and_exit(smollm2_gguf, chat_env, tmp_path):
    child = _spawn(smollm2_gguf, chat_env)
    answer = _say(child, "Hello! Who are you?", until=r"\d+ tokens, [\d.]+ tokens/s, first token [\d.]+ s")
    assert len(answer.strip()) > 10  # streamed text arrived before the stats line
    assert "Commands:" in _say(child, "/help", until="/regen")
    _say(child, "/set temperature 0.5", until=r"temperature = 0\.5")
    _say(child, "/set nonsense 1", until="unknown setting")
    _say(child, "/system You answer in one short sentence.", until="system prompt set")
    child.sendline('"""')  # a multi-line block
    child.expect(r"\.\.\.")
    child.sendline("Line one of the question.")
    child.expect(r"\.\.\.")
    _say(child, 'Line two."""', until="tokens/s")
    saved = tmp_path / "conv.json"
    _say(child, f"/save {saved}", until="saved to")
    data = json.loads(saved.read_text(encoding="utf-8"))
    assert data["system"] == "You answer in one short sentence."
    assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2
    assert data["messages"][2]["content"] == "Line one of the question.\nLine two."
    assert data["params"]["temperature"] == 0.5
    _say(child, "/regen", until="tokens/s")
    _say(child, "/stats", until="engine:")
    _say(child, "/reset", until="conversation cleared")
    _say(child, f"/load {saved}", until="loaded 4 messages")
    _say(child, "/load /nonexistent.json", until="error:")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_chat(smollm2_gguf, chat_env, tmp_path):
    child = _spawn(smollm2_gguf, chat_env, "--max-new-tokens", "500")
    child.sendline("Write a very long story about a dragon and a knight.")
    child.expect_exact(INPUT_DONE)  # the line is accepted: what follows is the answer
    child.expect(r"\w+ \w+ \w+")  # the answer is streaming
    time.sleep(0.2)
    child.sendcontrol("c")
    child.expect(r"\(stopped\)")
    child.expect(PROMPT)
    assert child.isalive()
    stopped = saved_conversation(child, tmp_path / "stopped.json")
    assert roles(stopped) == ["user", "assistant"]  # what was shown of the answer is kept
    assert stopped["messages"][1]["content"].strip()
    _say(child, "/set max_tokens 24", until="max_tokens = 24")
    _say(child, "Now tell me a short joke.", until="tokens/s")
    assert roles(saved_conversation(child, tmp_path / "next.json")) == ["user", "assistant"] * 2
    _say(child, "/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_pasted_lines_are_one_message(smollm2_gguf, chat_env, tmp_path):
    child = _spawn(smollm2_gguf, chat_env)
    child.send("\x1b[200~first pasted line\nsecond pasted line\x1b[201~")  # a terminal's bracketed paste
    child.send("\r")
    child.expect("tokens/s")
    child.expect(PROMPT)
    saved = tmp_path / "paste.json"
    _say(child, f"/save {saved}", until="saved to")
    messages = json.loads(saved.read_text(encoding="utf-8"))["messages"]
    assert messages[0] == {"role": "user", "content": "first pasted line\nsecond pasted line"}
    assert len(messages) == 2
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_history_is_kept_across_runs(smollm2_gguf, chat_env, tmp_path):
    child = _spawn(smollm2_gguf, chat_env)
    _say(child, "Remember the word pineapple.", until="tokens/s")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    history = tmp_path / "cache" / "chat_history"
    assert "Remember the word pineapple." in history.read_text(encoding="utf-8")
    child = _spawn(smollm2_gguf, chat_env)
    child.send("\x1b[A")  # arrow up recalls the last message of the previous run
    child.expect("pineapple")
    child.sendcontrol("c")  # Ctrl-C at the prompt clears the line and stays
    child.expect(PROMPT)
    assert child.isalive()
    # The new prompt is drawn a moment before prompt_toolkit reads keys again; a ^D typed in that gap meets
    # the terminal in cooked mode and is swallowed. No person types that fast; the test waits like one.
    time.sleep(1.0)
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_overlong_message_keeps_the_conversation(smollm2_gguf, chat_env, tmp_path):
    child = _spawn(smollm2_gguf, chat_env, columns=200, ctx=256)
    child.sendline("What is the capital of France?")
    child.expect(STATS)
    first_prompt = int(child.match.group(1))
    child.expect(PROMPT)
    paste(child, "word " * 300)
    shown = reply_lines(child)
    assert len(shown) == 1, shown
    assert re.fullmatch(r"error: the message needs \d+ tokens; the context holds 256 .*--ctx.*", shown[0])
    before = saved_conversation(child, tmp_path / "before.json")
    assert roles(before) == ["user", "assistant"]
    assert before["messages"][0]["content"] == "What is the capital of France?"
    child.sendline("And of Germany?")
    child.expect(STATS)
    assert int(child.match.group(1)) > first_prompt + 10  # the first turn is in the prompt
    child.expect(PROMPT)
    after = saved_conversation(child, tmp_path / "after.json")
    assert roles(after) == ["user", "assistant"] * 2 and after["messages"][:2] == before["messages"]
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_full_context_drops_the_oldest_turns_and_says_so_first(smollm2_gguf, chat_env, tmp_path):
    child = _spawn(smollm2_gguf, chat_env, "--system", "You answer briefly.", columns=200, ctx=256)
    for i in range(12):
        shown = visible(_say(child, f"Question {i}: tell me one fact about the number {i}.", until=STATS))
        if "context full" in shown:
            break
    else:
        raise AssertionError("the context never filled")
    notice, _, answer = shown.partition("(context full: dropped the oldest turn")
    assert "the system prompt stays)" in answer.split("\n", 1)[0]
    assert answer.split("\n", 1)[1].strip()  # the notice comes before the answer, not after it
    conversation = saved_conversation(child, tmp_path / "conv.json")
    assert conversation["system"] == "You answer briefly."
    assert roles(conversation) == ["user", "assistant"] * (len(conversation["messages"]) // 2)
    assert conversation["messages"][0]["content"] != "Question 0: tell me one fact about the number 0."
    assert conversation["messages"][-2]["content"].startswith(f"Question {i}:")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def _conversation_file(path, messages, **params) -> str:
    path.write_text(json.dumps({"system": None, "messages": messages, "params": params}), encoding="utf-8")
    return str(path)


def test_empty_or_failed_answer_leaves_no_question_without_answer(smollm2_gguf, chat_env, tmp_path):
    import gguf

    eos = int(gguf.GGUFReader(smollm2_gguf).fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    turn = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    silent = _conversation_file(tmp_path / "silent.json", turn, logit_bias={str(eos): 100.0})  # EOS at once
    broken = _conversation_file(tmp_path / "broken.json", turn, grammar="root ::= (")  # the engine refuses it
    normal = _conversation_file(tmp_path / "normal.json", turn, logit_bias={}, grammar=None)
    child = _spawn(smollm2_gguf, chat_env, columns=200)

    _say(child, f"/load {silent}", until="loaded 2 messages")
    shown = reply_lines(child, "What is your name?")
    assert shown[0] == "(no answer: the conversation is unchanged)", shown
    assert saved_conversation(child, tmp_path / "a.json")["messages"] == turn
    _say(child, f"/load {broken}", until="loaded 2 messages")
    *_llama_log, error, notice = reply_lines(child, "What is your name?")
    assert error.startswith("error: ") and "grammar" in error
    assert notice == "(no answer: the conversation is unchanged)"
    assert saved_conversation(child, tmp_path / "b.json")["messages"] == turn

    _say(child, f"/load {normal}", until="loaded 2 messages")
    child.sendline("What is your name?")
    child.expect(STATS)
    child.expect(PROMPT)
    after = saved_conversation(child, tmp_path / "c.json")
    assert roles(after) == ["user", "assistant"] * 2
    assert after["messages"][:2] == turn and after["messages"][2]["content"] == "What is your name?"
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_load_refuses_bad_files_and_keeps_the_conversation(smollm2_gguf, chat_env, tmp_path):
    from lcpp_zh.chat.session import MAX_SAVED_BYTES

    user, answer = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    bad = tmp_path / "bad"
    bad.mkdir()
    files = {"text.json": "not JSON at all", "list.json": "[1, 2]", "shape.json": '{"messages": "hello"}',
             "roles.json": json.dumps({"messages": [{"role": "system", "content": "x"}, answer]}),
             "twice.json": json.dumps({"messages": [user, user]}),
             "unanswered.json": json.dumps({"messages": [user, answer, user]}),
             "content.json": json.dumps({"messages": [{"role": "user", "content": ["x"]}, answer]}),
             "params.json": json.dumps({"messages": [user, answer], "params": {"temperature": "hot"}}),
             "nested.json": "[" * 100_000}
    for name, text in files.items():
        (bad / name).write_text(text, encoding="utf-8")
    (bad / "latin1.json").write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}')
    with open(bad / "huge.json", "wb") as f:  # sparse: nothing is written, the size is what counts
        f.truncate(MAX_SAVED_BYTES + 1)
    child = _spawn(smollm2_gguf, chat_env, columns=250)
    _say(child, "What is the capital of France?", until=STATS)
    before = saved_conversation(child, tmp_path / "before.json")
    for path in [bad / "missing.json", bad, *sorted(bad.iterdir())]:
        shown = reply_lines(child, f"/load {path}")
        assert len(shown) == 1 and shown[0].startswith(f"error: {path}: "), (path.name, shown)
    assert child.isalive()
    assert saved_conversation(child, tmp_path / "after.json") == before
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_save_replaces_files_whole_and_reports_errors(smollm2_gguf, chat_env, tmp_path):
    child = _spawn(smollm2_gguf, chat_env, columns=250)
    _say(child, "What is the capital of France?", until=STATS)
    target = tmp_path / "conv.json"
    target.write_text("an older save", encoding="utf-8")
    os.chmod(target, 0o640)
    assert roles(saved_conversation(child, target)) == ["user", "assistant"]
    assert target.stat().st_mode & 0o777 == 0o640  # the file replaced keeps its permissions
    folder = tmp_path / "folder"
    folder.mkdir()
    for path in [tmp_path / "missing" / "conv.json", folder]:
        shown = reply_lines(child, f"/save {path}")
        assert len(shown) == 1 and shown[0].startswith(f"error: {path}: cannot save the conversation"), shown
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "conv.json", "folder"]  # no temporary left
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


# What a model could print to take over a terminal: colour, an OSC 8 hyperlink hiding its target, bell,
# backspace and carriage return overwriting text, a bidi override, the 8-bit CSI; then Chinese and emoji.
FORCED_ANSWER = ("\x1b[31mRED\x1b[0m \x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\ a\x07b\x08c\rd "
                 "\u202eXY 北京😀 \x9b31mZ")


def test_escape_sequences_in_answers_never_reach_the_terminal(smollm2_gguf, chat_env, tmp_path):
    grammar = gbnf_literal(FORCED_ANSWER)
    forced = _conversation_file(tmp_path / "forced.json", [], max_tokens=120, grammar=grammar)
    child = _spawn(smollm2_gguf, chat_env, columns=200)
    _say(child, f"/load {forced}", until="loaded 0 messages")
    child.sendline("Say something.")
    answer = reply(child)
    for code in ("\x1b[31m", "\x1b]8", "\x07", "\x08", "c\rd", "\u202e", "\x9b"):
        assert code not in answer, code
    assert all(text in answer for text in ("RED", " link ", "abcd", "XY 北京😀 ", "Z")), answer
    saved = saved_conversation(child, tmp_path / "conv.json")
    assert saved["messages"][1]["content"] == FORCED_ANSWER  # the history keeps the model's raw text
    child.sendcontrol("d")
    child.expect(pexpect.EOF)


def test_piped_stdin(smollm2_gguf, chat_env):
    cmd = [*lcpp_zh_command(), "chat", str(smollm2_gguf), "--ctx", "1024", "--max-new-tokens", "16",
           "--temperature", "0", "--threads", "2"]
    result = subprocess.run(cmd, input="What is the capital of France?\n/stats\n", capture_output=True, text=True,
                            env=chat_env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "\x1b[" not in result.stdout  # no terminal codes in piped output
    assert "tokens/s" in result.stderr and "engine:" in result.stderr


def test_wrapping_counts_cjk_as_two_columns():
    wrapper = StreamWrapper(10)
    text = "".join(wrapper.feed(ch) for ch in "北京是中国的首都，有很多名胜古迹。") + wrapper.flush()
    lines = text.split("\n")
    assert all(sum(char_width(c) for c in line) <= 10 for line in lines)
    assert "".join(lines) == "北京是中国的首都，有很多名胜古迹。"
    assert [sum(char_width(c) for c in line) for line in lines[:-1]] == [10] * (len(lines) - 1)


def test_wrapping_moves_latin_words_whole():
    wrapper = StreamWrapper(12)
    out = "".join(wrapper.feed(chunk) for chunk in ["hello wo", "nderful wor", "ld 中文字"]) + wrapper.flush()
    assert out.split("\n") == ["hello ", "wonderful ", "world 中文字"]
