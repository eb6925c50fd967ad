"""The sampling settings a GGUF carries as `general.sampling.*` (llama.cpp's tools read them as defaults).

A checkpoint's generation_config.json is read by gguf-py's Metadata exactly as llama.cpp's converter reads
it, so those keys match the reference byte for byte. Only a FlagAlpha checkpoint (Atom, Llama2-Chinese)
without any sampling setting of its own gets more: the values FlagAlpha's README recommends. No runtime here.
"""

from __future__ import annotations

import logging

import gguf

from lcpp_zh.common.sampling_defaults import SEED_SAMPLING

logger = logging.getLogger(__name__)

# gguf.Metadata's attribute for every general.sampling.* key its writer knows.
SAMPLING_FIELDS = (
    "sampling_sequence", "sampling_top_k", "sampling_top_p", "sampling_min_p", "sampling_xtc_probability",
    "sampling_xtc_threshold", "sampling_temp", "sampling_penalty_last_n", "sampling_penalty_repeat",
    "sampling_mirostat", "sampling_mirostat_tau", "sampling_mirostat_eta",
)

# The Llama-Chinese README's settings (the seed's, one table for converter and runtime). Atom's and
# Llama2-Chinese's generation_config.json carry none of them.
FLAGALPHA_SAMPLING: dict[str, int | float] = {
    "sampling_top_k": SEED_SAMPLING.top_k,
    "sampling_top_p": SEED_SAMPLING.top_p,
    "sampling_temp": SEED_SAMPLING.temperature,
    "sampling_penalty_repeat": SEED_SAMPLING.repeat_penalty,
}

# convert's --sampling: auto adds RECOMMENDED_SAMPLING where the checkpoint has none; checkpoint never does.
SAMPLING_CHOICES = ("auto", "checkpoint")

# The template family (lcpp_zh.convert.chat_templates.detect_template_name) whose sampling we know.
RECOMMENDED_SAMPLING: dict[str, dict[str, int | float]] = {"llama2-chinese": FLAGALPHA_SAMPLING}


def has_sampling(metadata: gguf.Metadata) -> bool:
    """Whether the checkpoint (generation_config.json) set any general.sampling.* value."""
    return any(getattr(metadata, name, None) is not None for name in SAMPLING_FIELDS)


def add_recommended_sampling(metadata: gguf.Metadata, family: str | None) -> bool:
    """Fill in the recommended settings of a recognised model `family` when the checkpoint has none;
    a checkpoint's own settings are never mixed with ours. Returns whether anything was added."""
    recommended = RECOMMENDED_SAMPLING.get(family or "")
    if not recommended or has_sampling(metadata):
        return False
    for name, value in recommended.items():
        setattr(metadata, name, value)
    logger.info("no sampling settings in generation_config.json: writing %s's recommended ones", family)
    return True
