"""A conversation over the engine: messages, system prompt, sampling settings, template, context trimming,
saving and loading.

No terminal code (lcpp_zh.chat.repl draws it). Each turn renders the whole conversation; the engine's prefix
cache (one slot, same cache key) means only the new turn is evaluated. When the context fills, the oldest
turns are dropped, never the system prompt. The conversation changes only when an answer has text: a
message that cannot fit, a failed or an empty answer leave it as it was, so user and assistant turns
always alternate.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lcpp_zh.common.atomic import write_atomic
from lcpp_zh.errors import EngineError, LcppError
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.stream import Finished, TextDelta
from lcpp_zh.templates import ChatTemplate, Rendered, render_chat, template_for_engine

logger = logging.getLogger(__name__)

# Aliases users know from transformers / the seed.
SETTING_ALIASES = {"max_new_tokens": "max_tokens", "repetition_penalty": "repeat_penalty", "temp": "temperature"}
# A saved conversation is text; a bigger file is not one of ours (and would be read into memory whole).
MAX_SAVED_BYTES = 16 * 1024 * 1024
NO_ANSWER = "no answer: the conversation is unchanged"


class ChatSession:
    """The state of one chat; `ask` streams an answer and records the turn."""

    def __init__(self, engine, *, template: str | ChatTemplate | None = None, system: str | None = None,
                 params: SamplingParams | None = None) -> None:
        self.engine = engine
        self.template = template_for_engine(engine, template)
        self.system = system or None
        self.params = params or SamplingParams()
        self.messages: list[dict[str, str]] = []
        self.last: Finished | None = None
        self.notices: list[str] = []
        self._cache_key = uuid.uuid4().hex

    # --- conversation ---
    def conversation(self) -> list[dict[str, str]]:
        """The messages as the model sees them: the system prompt first."""
        return self._with_system(self.messages)

    def _with_system(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def reset(self) -> None:
        self.messages = []

    def set_system(self, text: str | None) -> None:
        self.system = text or None

    def set(self, name: str, value: str) -> str:
        """Change one sampling setting from text (`/set temperature 0.5`); returns the canonical name."""
        name = SETTING_ALIASES.get(name, name)
        if name not in self.setting_names():
            raise EngineError(f"unknown setting {name!r}; settings: {', '.join(self.setting_names())}")
        current = getattr(self.params, name)
        try:
            parsed = None if value.lower() == "none" and name == "seed" else (
                int(value) if isinstance(current, int) or name == "seed" else float(value))
        except ValueError:
            raise EngineError(f"{name}: {value!r} is not a number") from None
        self.params = self.params.replace(**{name: parsed})
        return name

    @staticmethod
    def setting_names() -> list[str]:
        # Settings that are not one number or word cannot be typed after /set.
        return [n for n in SamplingParams.names() if n not in ("stop", "logit_bias", *_SERVER_ONLY_PARAMS)]

    # --- turns ---
    def ask(self, text: str) -> Iterator[str]:
        """The answer to `text`, to iterate as it streams.

        Raises EngineError at once, the conversation unchanged, when the message cannot fit the context.
        The turn is recorded when the answer ends with some text, also when the caller stops early
        (Ctrl-C) or the engine fails midway: what the user saw is what the model will remember. An empty
        or failed answer records nothing (a notice says so), so two user turns never follow each other.
        """
        return self._start([*self.messages, {"role": "user", "content": text}])

    def regen(self) -> Iterator[str]:
        """Answer the last question again; the old answer stays if the new one comes out empty."""
        messages = list(self.messages)
        while messages and messages[-1]["role"] == "assistant":
            messages.pop()
        if not messages:
            raise EngineError("nothing to regenerate yet")
        return self._start(messages)

    def _start(self, messages: list[dict[str, str]]) -> Iterator[str]:
        self.last = None
        kept, rendered = self._fit(messages)
        return self._stream(kept, rendered)

    def _answer_room(self) -> int:
        return min(self.params.max_tokens, max(self.engine.n_ctx_slot // 4, 1))

    def _fit(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], Rendered]:
        """`messages` less their oldest turns, as few as possible, so the prompt leaves room to answer.

        Only whole turns go (from a user message on) and the system prompt always stays. Nothing changes
        here: the caller records the shorter conversation once the answer has come.
        """
        limit = self.engine.n_ctx_slot - self._answer_room()
        renders: dict[int, Rendered] = {}

        def fits(start: int) -> bool:
            if start not in renders:
                renders[start] = render_chat(self.engine, self._with_system(messages[start:]), self.template)
            return len(renders[start].tokens) <= limit

        if fits(0):
            return messages, renders[0]
        starts = [i for i, m in enumerate(messages) if i > 0 and m["role"] == "user"]
        if not starts or not fits(starts[-1]):
            needed = len(renders[starts[-1] if starts else 0].tokens)
            with_system = " with the system prompt" if self.system else ""
            raise EngineError(f"the message needs {needed} tokens{with_system}; the context holds "
                              f"{self.engine.n_ctx_slot} with {self._answer_room()} kept for the answer: "
                              "shorten it or raise --ctx (the conversation is unchanged)")
        lo, hi = 0, len(starts) - 1  # the smallest start that fits, by bisection: fewer turns, fewer tokens
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(starts[mid]) else (mid + 1, hi)
        start = starts[lo]
        dropped = sum(m["role"] == "user" for m in messages[:start])
        first = " ".join(messages[0]["content"].split())
        first = first if len(first) <= 30 else first[:29] + "…"
        what = "the oldest turn" if dropped == 1 else f"the oldest {dropped} turns"
        kept = "; the system prompt stays" if self.system else ""
        self.notices.append(f"context full: dropped {what} ({first!r}) to make room{kept}")
        return messages[start:], renders[start]

    def _stream(self, messages: list[dict[str, str]], rendered: Rendered) -> Iterator[str]:
        params = self.params.replace(stop=list(dict.fromkeys([*self.params.stop, *rendered.stops])))
        stream = None
        parts: list[str] = []
        try:
            stream = self.engine.submit(rendered.tokens, params, cache_key=self._cache_key)
            for event in stream:
                if isinstance(event, TextDelta):
                    piece = event.text if parts else event.text.lstrip()
                    if piece:
                        parts.append(piece)
                        yield piece
                else:
                    self.last = event
                    if event.reason == "error":
                        raise EngineError(event.error or "generation failed")
        finally:
            if stream is not None and self.last is None:  # stopped early: let the engine finish the request
                stream.cancel()
                self.last = _drain(stream)
            self._record(messages, "".join(parts).strip())

    def _record(self, messages: list[dict[str, str]], answer: str) -> None:
        if answer:
            self.messages = [*messages, {"role": "assistant", "content": answer}]
        else:
            self.notices.append(NO_ANSWER)

    # --- files ---
    def save(self, path: str | os.PathLike) -> Path:
        """Write the conversation as JSON, atomically: the file is whole or untouched."""
        path = Path(path).expanduser()
        data = {"system": self.system, "template": self.template.name, "messages": self.messages,
                "params": {k: v for k, v in asdict(self.params).items() if k not in _SERVER_ONLY_PARAMS}}
        try:
            payload = (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
        except ValueError as exc:  # a lone surrogate from undecodable input
            raise LcppError(f"{path}: cannot save the conversation ({exc})") from exc
        write_atomic(path, payload, _save_failure)
        return path

    def load(self, path: str | os.PathLike) -> int:
        """Replace the conversation with a saved one; on any error the current one stays as it is."""
        system, messages, params = read_conversation(Path(path).expanduser(), self.params)
        self.messages, self.system, self.params = messages, system, params
        return len(messages)


def _save_failure(path: Path, why: str) -> LcppError:
    return LcppError(f"{path}: cannot save the conversation ({why})")


def read_conversation(path: Path,
                      params: SamplingParams) -> tuple[str | None, list[dict[str, str]], SamplingParams]:
    """System prompt, messages and `params` updated from a file written by `save`, all checked."""
    def bad(why: str) -> LcppError:
        return LcppError(f"{path}: not a saved conversation: {why}")

    try:
        if not path.is_file():
            raise LcppError(f"{path}: {'is a folder' if path.is_dir() else 'no such file'}")
        size = path.stat().st_size
        if size > MAX_SAVED_BYTES:
            raise bad(f"{size / 2**20:.0f} MiB, more than the {MAX_SAVED_BYTES // 2**20} MiB a conversation takes")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise LcppError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise bad("JSON nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise bad('expected a JSON object with a "messages" list')
    messages = [_check_message(i, m, bad) for i, m in enumerate(data["messages"])]
    if messages and messages[-1]["role"] != "assistant":
        raise bad(f"message {len(messages) - 1} is a user turn without an answer")
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise bad('"system" must be text')
    return system or None, messages, _saved_params(data.get("params", {}), params, bad)


def _check_message(i: int, message: Any, bad) -> dict[str, str]:
    expected = "user" if i % 2 == 0 else "assistant"  # what a chat can only have produced
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise bad(f'message {i} needs a "role" and a text "content"')
    if message.get("role") != expected:
        role = message.get("role")
        shown = repr(role if not isinstance(role, str) else role[:20])
        raise bad(f"message {i} has role {shown}; turns go user, assistant, user, ... ({expected} expected)")
    return {"role": expected, "content": message["content"]}


# Grammars (and the lazy grammar's triggers) come with a server request: the REPL neither sets nor saves them
# (a conversation file written by hand may still carry a grammar, which /load applies).
_SERVER_ONLY_PARAMS = ("grammar", "grammar_triggers")


def _saved_params(saved: Any, params: SamplingParams, bad) -> SamplingParams:
    """`params` with the saved settings applied; each must have its setting's type (JSON says 1 for 1.0)."""
    if not isinstance(saved, dict):
        raise bad('"params" must be an object')
    known = {k: v for k, v in saved.items() if k in SamplingParams.names() and k != "grammar_triggers"}
    for name, value in known.items():
        if not _param_type_ok(name, value, getattr(params, name)):
            raise bad(f"setting {name} has the wrong type ({type(value).__name__})")
    try:
        return params.replace(**known)
    except (EngineError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise bad(str(exc)) from None


def _param_type_ok(name: str, value: Any, current: Any) -> bool:
    def number(v: Any, kinds: tuple[type, ...]) -> bool:
        return isinstance(v, kinds) and not isinstance(v, bool)

    if name in ("seed", "grammar"):
        return value is None or (number(value, (int,)) if name == "seed" else isinstance(value, str))
    if name == "stop":
        return isinstance(value, list) and all(isinstance(s, str) for s in value)
    if name == "logit_bias":
        return isinstance(value, dict) and all(number(b, (int, float)) for b in value.values())
    return number(value, (int,) if isinstance(current, int) else (int, float))


def _drain(stream) -> Finished | None:
    last = None
    for event in stream:
        if isinstance(event, Finished):
            last = event
    return last
