"""A conversation over the engine: messages, system prompt, sampling settings, template, context trimming.

No terminal code (lcpp_zh.chat draws it). Each turn renders the whole conversation; the engine's prefix
cache (one slot, same cache key) means only the new turn is evaluated. When the context fills, the oldest
turns are dropped, never the system prompt.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from lcpp_zh.errors import EngineError, LcppError
from lcpp_zh.sampling import SamplingParams
from lcpp_zh.stream import Finished, TextDelta
from lcpp_zh.templates import ChatTemplate, Rendered, render_chat, template_for_engine

logger = logging.getLogger(__name__)

# Aliases users know from transformers / the seed.
SETTING_ALIASES = {"max_new_tokens": "max_tokens", "repetition_penalty": "repeat_penalty", "temp": "temperature"}


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
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

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
        return [n for n in SamplingParams.names() if n not in ("stop", "grammar", "logit_bias")]

    # --- turns ---
    def ask(self, text: str) -> Iterator[str]:
        """Stream the answer to `text`; the turn is recorded even when the caller stops early (Ctrl-C)."""
        self.messages.append({"role": "user", "content": text})
        return self._answer()

    def regen(self) -> Iterator[str]:
        """Answer the last question again."""
        while self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages:
            raise EngineError("nothing to regenerate yet")
        return self._answer()

    def _render(self) -> Rendered:
        """Render the conversation, dropping the oldest turns while it leaves too little room to answer."""
        room = min(self.params.max_tokens, max(self.engine.n_ctx_slot // 4, 1))
        while True:
            rendered = render_chat(self.engine, self.conversation(), self.template)
            if len(rendered.tokens) + room <= self.engine.n_ctx_slot:
                return rendered
            if len(self.messages) <= 1:
                raise EngineError(f"the message needs {len(rendered.tokens)} tokens; the context holds "
                                  f"{self.engine.n_ctx_slot} (raise --ctx)")
            dropped = self.messages.pop(0)
            while self.messages and self.messages[0]["role"] != "user":
                self.messages.pop(0)
            self.notices.append(f"context full: dropped the oldest turn ({dropped['content'][:30]!r}...)")

    def _answer(self) -> Iterator[str]:
        self.last = None
        rendered = self._render()
        params = self.params.replace(stop=list(dict.fromkeys([*self.params.stop, *rendered.stops])))
        stream = self.engine.submit(rendered.tokens, params, cache_key=self._cache_key)
        parts: list[str] = []
        try:
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
            if self.last is None or not stream.done:
                stream.cancel()
                self.last = _drain(stream)
            answer = "".join(parts).strip()
            if answer:
                self.messages.append({"role": "assistant", "content": answer})

    # --- files ---
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path).expanduser()
        data = {"system": self.system, "template": self.template.name, "messages": self.messages,
                "params": {k: v for k, v in asdict(self.params).items() if k != "grammar"}}
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise LcppError(f"{path}: cannot save the conversation ({exc.strerror})") from exc
        return path

    def load(self, path: str | os.PathLike) -> int:
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            messages = [{"role": m["role"], "content": m["content"]} for m in data["messages"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LcppError(f"{path}: not a saved conversation ({exc})") from exc
        if any(m["role"] not in ("user", "assistant") or not isinstance(m["content"], str) for m in messages):
            raise LcppError(f"{path}: messages must be user/assistant turns with text")
        self.messages = messages
        self.system = data.get("system") or None
        if isinstance(data.get("params"), dict):
            known = {k: v for k, v in data["params"].items() if k in SamplingParams.names()}
            self.params = self.params.replace(**known)
        return len(messages)


def _drain(stream) -> Finished | None:
    last = None
    for event in stream:
        if isinstance(event, Finished):
            last = event
    return last
