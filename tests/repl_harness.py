"""Drive `lcpp-zh chat` in a real pseudo-terminal (pexpect), as a person at a terminal would.

The environment for it is the `chat_env` fixture in conftest.py. `visible` turns what the terminal
received into the text a person sees (prompt_toolkit's own cursor and colour codes removed), for checks
such as "this error is one line".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pexpect
from conftest import lcpp_zh_command

PROMPT = ">>>"  # prompt_toolkit draws the trailing space with a cursor move
# prompt_toolkit turns bracketed paste off once a line is accepted and on again for the next prompt: what
# lies between is the chat's reply (the ">>>" of the line's own redraws would match PROMPT too early).
INPUT_DONE, INPUT_AGAIN = "\x1b[?2004l", "\x1b[?2004h"
STATS = r"\d+ tokens, [\d.]+ tokens/s, first token [\d.]+ s, prompt (\d+) \((\d+) cached\)"

# CSI and OSC sequences and two-character escapes, as prompt_toolkit writes them.
_TERMINAL_CODES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def spawn_chat(model, env, *extra: str, columns: int = 80, ctx: int = 1024) -> pexpect.spawn:
    """`lcpp-zh chat MODEL` (greedy, 24 new tokens) in a 24-row terminal, waiting for its first prompt."""
    cmd = lcpp_zh_command()
    args = [*cmd[1:], "chat", str(model), "--ctx", str(ctx), "--max-new-tokens", "24", "--temperature", "0",
            "--threads", "2", *extra]
    child = pexpect.spawn(cmd[0], args, env=env, encoding="utf-8", timeout=120, dimensions=(24, columns))
    child.expect(PROMPT)
    return child


def say(child: pexpect.spawn, line: str, until: str = PROMPT) -> str:
    """Type a line; return what the terminal received until `until` (then wait for the next prompt)."""
    child.sendline(line)
    child.expect(until)
    text = child.before
    if until != PROMPT:
        child.expect(PROMPT)
    return text


def paste(child: pexpect.spawn, text: str) -> None:
    """Paste `text` as a terminal does (bracketed paste) and press Enter: fast even for long messages."""
    child.send(f"\x1b[200~{text}\x1b[201~")
    child.send("\r")


def visible(raw: str) -> str:
    """The text a person sees in `raw` terminal output: no escape sequences, no carriage returns."""
    return _TERMINAL_CODES.sub("", raw).replace("\r", "")


def reply(child: pexpect.spawn) -> str:
    """What the chat wrote (raw) in reply to the line just sent, up to its next prompt."""
    child.expect_exact(INPUT_DONE)
    child.expect_exact(INPUT_AGAIN)
    text = child.before
    child.expect(PROMPT)
    return text


def reply_lines(child: pexpect.spawn, line: str | None = None) -> list[str]:
    """Type `line` (None: it was sent already) and return the non-empty lines the chat printed in reply."""
    if line is not None:
        child.sendline(line)
    return [text for text in visible(reply(child)).split("\n") if text.strip()]


def saved_conversation(child: pexpect.spawn, path: Path) -> dict:
    """`/save PATH` and the JSON it wrote."""
    say(child, f"/save {path}", until="saved to")
    return json.loads(Path(path).read_text(encoding="utf-8"))


def roles(conversation: dict) -> list[str]:
    return [m["role"] for m in conversation["messages"]]


def gbnf_literal(text: str) -> str:
    """A GBNF grammar whose only sentence is `text`: greedy decoding under it makes the model say exactly
    that, whatever the model (how the tests get escape sequences out of a real model)."""
    def char(ch: str) -> str:
        code = ord(ch)
        if ch in '"\\' or code < 0x20 or 0x7F <= code <= 0x9F:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if 0x2000 <= code <= 0x206F else ch
    return 'root ::= "' + "".join(map(char, text)) + '"'
