"""Drive `lcpp-zh chat` in a real pseudo-terminal (pexpect), as a person at a terminal would.

The environment for it is the `chat_env` fixture in conftest.py.
"""

from __future__ import annotations

import pexpect
from conftest import lcpp_zh_command

PROMPT = ">>>"  # prompt_toolkit draws the trailing space with a cursor move


def spawn_chat(model, env, *extra: str, columns: int = 80) -> pexpect.spawn:
    """`lcpp-zh chat MODEL` (greedy, 24 new tokens) in a 24-row terminal, waiting for its first prompt."""
    cmd = lcpp_zh_command()
    args = [*cmd[1:], "chat", str(model), "--ctx", "1024", "--max-new-tokens", "24", "--temperature", "0",
            "--threads", "2", *extra]
    child = pexpect.spawn(cmd[0], args, env=env, encoding="utf-8", timeout=120, dimensions=(24, columns))
    child.expect(PROMPT)
    return child
