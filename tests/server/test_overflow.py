"""--context-overflow truncate-middle's choice of messages (lcpp_zh.server.overflow.fit_history): whole old turns
go, oldest first, the system prompt and the latest turn stay, and no more is dropped than needed. Measured
with a length function standing in for rendering and tokenizing; the real server path is in
test_server_context.py."""

from __future__ import annotations

from lcpp_zh.server.overflow import fit_history


def _history(n_turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "S" * 10}]
    for i in range(n_turns):
        messages += [{"role": "user", "content": f"u{i}" + "x" * 98},
                     {"role": "assistant", "content": f"a{i}" + "y" * 98}]
    return messages + [{"role": "user", "content": "last"}]


def _size(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


def test_fits_already_drops_nothing():
    messages = _history(3)
    assert fit_history(messages, lambda m: True) == (messages, 0)


def test_drops_the_fewest_oldest_whole_turns():
    messages = _history(10)  # 10 + 10 * 200 + 4 characters
    kept, dropped = fit_history(messages, lambda m: _size(m) <= 1000)
    assert dropped == 12  # six turns of two messages: 10 + 4 * 200 + 4 fits, 5 turns would not
    assert kept[0]["role"] == "system" and kept[1]["content"].startswith("u6") and kept[-1]["content"] == "last"
    assert _size(kept) <= 1000 and _size(messages[:1] + messages[11:]) > 1000


def test_turns_with_tool_messages_go_whole_and_the_last_turn_always_stays():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u0"},
                {"role": "assistant", "content": "calls"}, {"role": "tool", "content": "result"},
                {"role": "assistant", "content": "a0"}, {"role": "user", "content": "u1" * 50}]
    kept, dropped = fit_history(messages, lambda m: _size(m) <= 10)
    assert dropped == 4 and [m["role"] for m in kept] == ["system", "user"]  # still too long: the caller's 400
