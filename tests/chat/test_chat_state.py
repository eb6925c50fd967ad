"""The chat keeps its state: the control filter that stands between the model and the terminal, and the
ChatSession on a real engine (SmolLM2-135M-Instruct): a message too long for the context, an empty, failed
or stopped answer, a full context, /load of bad files and an interrupted /save never leave a conversation
the next prompt would render wrong. The same cases through a real terminal are in test_chat_repl.py."""

from __future__ import annotations

import errno
import io
import json
import os

import pytest

from lcpp_zh.chat import session as chat_session
from lcpp_zh.chat.repl import Terminal, stream_answer
from lcpp_zh.chat.session import ChatSession
from lcpp_zh.chat.wrap import ControlFilter, StreamWrapper, char_width, is_control, strip_controls
from lcpp_zh.errors import EngineError, LcppError
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.templates import render_chat

NO_ANSWER = "no answer: the conversation is unchanged"

# --- the control filter ---

CASES = {
    "colour": ("a\x1b[1;31mred\x1b[0m b", "ared b"),
    "cursor and erase": ("x\x1b[2J\x1b[H\x1b[10;20Hy\x1b[?25l", "xy"),
    "osc 8 link, ST": ("\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\ ok", "click ok"),
    "osc 8 link, BEL": ("\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07", "click"),
    "window title": ("\x1b]0;pwned\x07after", "after"),
    "dcs": ("\x1bP1$qm\x1b\\x", "x"),
    "8-bit csi and osc": ("\x9b31mC1 \x9d0;t\x9cend", "C1 end"),
    "bel, backspace, del, nul": ("a\x07b\x08c\x7fd\x00e", "abcde"),
    "carriage return": ("safe\rEVIL\r\nnext", "safeEVIL\nnext"),
    "bidi override": ("file\u202eexe.txt \u2066x\u2069 \u200f", "fileexe.txt x "),
    "charset designation": ("\x1b(0lqk\x1b(B", "lqk"),
    "two-character escapes": ("\x1b7\x1bcX\x1b8", "X"),
    "stray esc": ("a\x1b\nb\x1b", "a\nb"),
    "csi cut by text": ("\x1b[12中文", "中文"),
    "unterminated osc ends at the line": ("\x1b]8;;http://x\nvisible", "\nvisible"),
    "chinese, emoji, tab, newline": ("北京\t😀👨\u200d👩\u200d👧 🇨🇳\n", "北京\t😀👨\u200d👩\u200d👧 🇨🇳\n"),
}


@pytest.mark.parametrize("raw, shown", CASES.values(), ids=CASES.keys())
def test_control_filter_cases(raw, shown):
    assert strip_controls(raw) == shown


@pytest.mark.parametrize("raw, shown", CASES.values(), ids=CASES.keys())
def test_control_filter_is_the_same_however_the_stream_is_cut(raw, shown):
    # Token by token, an escape sequence arrives in pieces: ESC in one chunk, "[31m" in the next.
    for cut in range(len(raw) + 1):
        f = ControlFilter()
        assert f.feed(raw[:cut]) + f.feed(raw[cut:]) + f.flush() == shown, cut
    f = ControlFilter()
    assert "".join(f.feed(ch) for ch in raw) + f.flush() == shown


def test_control_filter_lets_no_control_character_through():
    every = "".join(map(chr, range(0x3000)))
    assert not any(is_control(ch) for ch in strip_controls(every * 3))
    for code in range(0x3000):  # one at a time: each is kept or dropped, never changed
        ch = chr(code)
        assert strip_controls(ch) == ("" if is_control(ch) else ch)
    controls = [code for code in range(0x3000) if is_control(chr(code))]
    assert controls == [*range(0x09), 0x0B, 0x0C, *range(0x0D, 0x20), *range(0x7F, 0xA0),  # C0, DEL, C1
                        0x61C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]  # bidi


def test_an_endless_osc_does_not_eat_the_answer():
    out = strip_controls("\x1b]8;;" + "x" * 10_000)
    assert 0 < len(out) < 10_000


def test_filtered_stream_wraps_by_display_width():
    controls, wrapper = ControlFilter(), StreamWrapper(10)
    text = "\x1b[31m北京是中国的首都\x1b[0m，😀有很多名胜古迹。"
    out = "".join(wrapper.feed(controls.feed(ch)) for ch in text) + wrapper.flush()
    assert out.replace("\n", "") == "北京是中国的首都，😀有很多名胜古迹。"
    assert all(sum(char_width(c) for c in line) <= 10 for line in out.split("\n"))


def test_tab_advances_to_the_next_stop():
    wrapper = StreamWrapper(20)
    out = wrapper.feed("ab\tcd\t") + wrapper.flush()
    assert out == "ab\tcd\t" and wrapper.col == 16
    assert wrapper.feed("\tx") + wrapper.flush() == "\nx"  # the tab at the margin becomes the line break


def test_stream_answer_writes_only_filtered_text():
    out = io.StringIO()
    term = Terminal(stdin=io.StringIO(), stdout=out, stderr=io.StringIO())
    chunks = ["\x1b", "]8;;http://evil", "\x1b\\", "link", "\x1b]8;;\x1b\\", " \x1b[", "31m北京", "\u202e😀"]
    assert stream_answer(term, iter(chunks))
    assert out.getvalue() == "link 北京😀\n"


# --- the session on a real engine ---


@pytest.fixture(scope="module")
def engine(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=1024, n_parallel=1, n_threads=2)) as eng:
        yield eng


@pytest.fixture(scope="module")
def small(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=2)) as eng:
        yield eng


@pytest.fixture
def prompts(monkeypatch):
    """Record the prompt tokens each session hands to its engine."""
    seen: list[list[int]] = []

    def watch(engine):
        submit = engine.submit

        def recording(tokens, *args, **kwargs):
            seen.append(list(tokens))
            return submit(tokens, *args, **kwargs)

        monkeypatch.setattr(engine, "submit", recording)
        return seen

    return watch


def _session(engine, **params) -> ChatSession:
    return ChatSession(engine, system="You answer briefly.",
                       params=SamplingParams(**{"temperature": 0, "max_tokens": 12, **params}))


def _expected_prompt(session: ChatSession, question: str) -> list[int]:
    return render_chat(session.engine, [*session.conversation(), {"role": "user", "content": question}],
                       session.template).tokens


def _alternate(session: ChatSession) -> bool:
    return [m["role"] for m in session.messages] == ["user", "assistant"] * (len(session.messages) // 2)


def test_overlong_message_leaves_the_conversation_and_the_next_turn_sees_it(small, prompts):
    session = _session(small)
    "".join(session.ask("Name a fruit."))
    before = [dict(m) for m in session.messages]
    with pytest.raises(EngineError, match=r"needs \d+ tokens.* the context holds 256") as refused:
        "".join(session.ask("word " * 400))
    assert session.messages == before and session.system == "You answer briefly."
    assert "with the system prompt" in str(refused.value) and "(the conversation is unchanged)" in str(refused.value)
    seen = prompts(small)
    expected = _expected_prompt(session, "Name a color.")
    assert "".join(session.ask("Name a color."))
    assert seen == [expected]  # the next prompt is the whole history plus the new question
    assert _alternate(session) and session.messages[:2] == before


def test_empty_answer_is_not_recorded(engine, prompts):
    session = _session(engine)
    "".join(session.ask("Name a fruit."))
    before = [dict(m) for m in session.messages]
    session.params = session.params.replace(logit_bias={engine.eos_id: 100.0})  # the model ends at once
    assert "".join(session.ask("Name a color.")) == ""
    assert session.messages == before and session.notices == [NO_ANSWER]
    assert session.last.reason == "stop" and session.last.completion_tokens <= 1
    session.params = session.params.replace(logit_bias={})
    seen = prompts(engine)
    expected = _expected_prompt(session, "Name an animal.")
    "".join(session.ask("Name an animal."))
    assert seen == [expected]
    assert "Name a color." not in engine.detokenize(seen[0], special=True)
    assert _alternate(session) and len(session.messages) == 4


def test_failed_answer_is_not_recorded(engine):
    session = _session(engine)
    "".join(session.ask("Name a fruit."))
    before = [dict(m) for m in session.messages]
    session.params = session.params.replace(grammar="root ::= (")  # llama.cpp refuses it: an error event
    with pytest.raises(EngineError, match="grammar"):
        "".join(session.ask("Name a color."))
    assert session.messages == before and session.notices == [NO_ANSWER]


def test_regen_that_comes_out_empty_keeps_the_old_answer(engine):
    session = _session(engine)
    "".join(session.ask("Name a fruit."))
    before = [dict(m) for m in session.messages]
    session.params = session.params.replace(logit_bias={engine.eos_id: 100.0})
    assert "".join(session.regen()) == ""
    assert session.messages == before


def test_stopped_answer_keeps_what_was_shown(engine):
    session = _session(engine, max_tokens=200)
    answer = session.ask("Write a long story about a dragon.")
    first = next(answer)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the engine thread works on the next token
        answer.throw(KeyboardInterrupt)
    assert session.messages == [{"role": "user", "content": "Write a long story about a dragon."},
                                {"role": "assistant", "content": first.strip()}]
    assert session.last.reason == "cancelled"
    answer = session.ask("And a short one?")
    next(answer)
    answer.close()  # stopped between two chunks: the REPL closes the answer
    assert _alternate(session) and len(session.messages) == 4
    session.ask("Never read.").close()  # stopped before it began: nothing happened
    assert len(session.messages) == 4 and session.notices == []


def test_full_context_drops_as_few_oldest_turns_as_needed(small):
    session = _session(small)
    limit = small.n_ctx_slot - min(session.params.max_tokens, small.n_ctx_slot // 4)
    for i in range(20):
        before = [dict(m) for m in session.messages]
        question = f"Question {i}: tell me one fact about the number {i}."
        "".join(session.ask(question))
        if session.notices:
            break
    else:
        pytest.fail("the context never filled")
    assert session.notices[0].startswith("context full: dropped the oldest turn")
    assert "the system prompt stays" in session.notices[0]
    assert session.system == "You answer briefly." and _alternate(session)
    kept = session.messages[:-2]
    assert kept == before[len(before) - len(kept):] and len(kept) < len(before)
    one_more = before[len(before) - len(kept) - 2:]
    longer = render_chat(small, [*session._with_system(one_more), {"role": "user", "content": question}],
                         session.template)
    assert len(longer.tokens) > limit  # keeping one more turn would not have fit


def _write(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


USER, ANSWER = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
BAD_FILES = {
    "not json": "{nope",
    "a list": [USER, ANSWER],
    "messages not a list": {"messages": {"0": USER}},
    "system role inside": {"messages": [{"role": "system", "content": "x"}, USER, ANSWER]},
    "two user turns": {"messages": [USER, USER]},
    "starts with the assistant": {"messages": [ANSWER, USER]},
    "question without answer": {"messages": [USER, ANSWER, USER]},
    "content not text": {"messages": [{"role": "user", "content": None}, ANSWER]},
    "system not text": {"system": ["x"], "messages": []},
    "setting of the wrong type": {"messages": [USER, ANSWER], "params": {"top_k": 1.5}},
    "setting out of range": {"messages": [USER, ANSWER], "params": {"top_p": 7}},
    "stop not a list": {"messages": [USER, ANSWER], "params": {"stop": "abc"}},
    "not utf-8": '{"messages": [{"role": "user", "content": "caf\xe9"}]}'.encode("latin-1"),
    "nested too deep": "[" * 100_000,
}


@pytest.mark.parametrize("content", BAD_FILES.values(), ids=BAD_FILES.keys())
def test_load_of_a_bad_file_changes_nothing(engine, tmp_path, content):
    session = _session(engine)
    session.messages = [dict(USER), dict(ANSWER)]
    params = session.params
    path = _write(tmp_path, "bad.json", content)
    with pytest.raises(LcppError) as caught:
        session.load(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    assert session.messages == [USER, ANSWER] and session.params == params
    assert session.system == "You answer briefly."


def test_load_refuses_missing_folders_and_huge_files(engine, tmp_path):
    session = _session(engine)
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(chat_session.MAX_SAVED_BYTES + 1)
    for path, why in [(tmp_path / "missing.json", "no such file"), (tmp_path, "is a folder"), (huge, "MiB")]:
        with pytest.raises(LcppError, match=why):
            session.load(path)


def test_save_and_load_round_trip(engine, tmp_path):
    session = _session(engine, logit_bias={5: -1.0}, stop=["END"])
    session.messages = [dict(USER), {"role": "assistant", "content": "\x1b[31mraw\x1b[0m 北京"}]
    path = session.save(tmp_path / "conv.json")
    other = _session(engine)
    assert other.load(path) == 2
    assert other.messages == session.messages and other.system == session.system
    assert other.params.logit_bias == {5: -1.0} and other.params.stop == ["END"]


def test_save_failing_midway_leaves_the_old_file(engine, tmp_path, monkeypatch):
    session = _session(engine)
    session.messages = [dict(USER), dict(ANSWER)]
    target = tmp_path / "conv.json"
    target.write_text("the older save", encoding="utf-8")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(LcppError, match="No space left on device"):
        session.save(target)
    assert target.read_text(encoding="utf-8") == "the older save"
    assert [p.name for p in tmp_path.iterdir()] == ["conv.json"]
