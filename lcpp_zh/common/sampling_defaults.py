"""The seed's sampling defaults, in one table read by the converter, the runtime and the CLI.

The seed's Chinese Llama 2 settings (FlagAlpha's Llama-Chinese README); the samplers the seed did not set stay
off. Data only: lcpp_zh.runtime.sampling validates and uses them, convert/ writes them into GGUFs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SeedSampling:
    """Field names are SamplingParams' (lcpp_zh.runtime.sampling), which takes its defaults from here."""

    # The seed's inference examples (Llama-Chinese README): top_k 50, top_p 0.95, temperature 0.3,
    # repetition_penalty 1.3, max_new_tokens 512. Atom's and Llama2-Chinese's generation_config.json have none.
    temperature: float = 0.3
    top_p: float = 0.95
    top_k: int = 50
    repeat_penalty: float = 1.3
    max_tokens: int = 512
    # Off, as in the seed's transformers generate(); the penalty looks back llama.cpp's default 64 tokens.
    min_p: float = 0.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SEED_SAMPLING = SeedSampling()
