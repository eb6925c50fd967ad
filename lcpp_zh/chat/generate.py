"""One-shot generation (`lcpp-zh generate`): a prompt in, one answer out, streamed to a callback.

Reproduces the seed's transformers demo: the prompt goes through the model's chat template (or as raw text
with `raw=True`) and the seed's sampling settings are the defaults. The CLI prints; this module does not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.stream import Finished, TextDelta
from lcpp_zh.templates import render_chat

logger = logging.getLogger(__name__)


@dataclass
class GenerateResult:
    text: str
    finished: Finished
    prompt_text: str
    template: str | None

    def as_dict(self) -> dict:
        f = self.finished
        return {"text": self.text, "finish_reason": f.reason, "template": self.template,
                "prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
                "cached_tokens": f.cached_tokens, "ttft_s": round(f.ttft_s, 4),
                "tokens_per_s": round(f.tokens_per_s, 2), "draft_tokens": f.draft_tokens,
                "draft_accepted": f.draft_accepted, "error": f.error}


def build_prompt(engine, prompt: str, *, raw: bool = False, template=None,
                 system: str | None = None) -> tuple[list[int], list[str], str, str | None]:
    """Prompt tokens, stop strings, the prompt text and the template name used."""
    if raw:
        return engine.tokenize(prompt, add_bos=engine.add_bos, special=True), [], prompt, None
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    rendered = render_chat(engine, messages, template, add_generation_prompt=True)
    return rendered.tokens, rendered.stops, rendered.text, rendered.template


def generate(engine, prompt: str, params: SamplingParams | None = None, *, raw: bool = False, template=None,
             system: str | None = None, on_text: Callable[[str], None] | None = None) -> GenerateResult:
    """Generate one answer; `on_text` receives the text as it streams. Ctrl-C cancels cleanly."""
    params = params or SamplingParams()
    tokens, stops, text, name = build_prompt(engine, prompt, raw=raw, template=template, system=system)
    params = params.replace(stop=list(dict.fromkeys([*params.stop, *stops])))
    room = engine.n_ctx_slot - len(tokens)
    if room < 1:
        raise EngineError(f"the prompt has {len(tokens)} tokens but the context holds {engine.n_ctx_slot}; "
                          "raise --ctx or shorten the prompt")
    stream = engine.submit(tokens, params)
    parts: list[str] = []
    try:
        for event in stream:
            if isinstance(event, TextDelta):
                piece = event.text if parts or raw else event.text.lstrip(" ")
                if piece:
                    parts.append(piece)
                    if on_text:
                        on_text(piece)
            else:
                finished = event
    except KeyboardInterrupt:
        stream.cancel()
        for event in stream:
            if isinstance(event, Finished):
                finished = event
    if finished.reason == "error":
        raise EngineError(finished.error or "generation failed")
    return GenerateResult("".join(parts), finished, text, name)
