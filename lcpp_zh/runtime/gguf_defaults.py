"""Sampling defaults that travel with a model: a GGUF's general.sampling.* keys as SamplingParams.

llama.cpp's tools start from these keys (common/common.cpp, common_init_sampler_from_model) and so do
chat, generate and serve: the GGUF's values where it has them, the seed's (SamplingParams' own defaults)
where it has none, and a setting the user gave explicitly always wins. Reads metadata; loads nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.sampling import SamplingParams

logger = logging.getLogger(__name__)

# GGUF key -> (SamplingParams field, parser). Keys without a counterpart here (sequence, xtc_*, mirostat*)
# configure samplers the runtime does not have and are ignored.
GGUF_SAMPLING_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "general.sampling.temp": ("temperature", float),
    "general.sampling.top_p": ("top_p", float),
    "general.sampling.top_k": ("top_k", int),
    "general.sampling.min_p": ("min_p", float),
    "general.sampling.penalty_repeat": ("repeat_penalty", float),
    "general.sampling.penalty_last_n": ("repeat_last_n", int),
}


def _parse(parser: Callable[[Any], Any], raw: Any) -> Any:
    # llama.cpp hands metadata over as text ("0.950000"); GGUFReader as float32 (0.949999988).
    value = parser(float(raw)) if parser is int else parser(raw)
    return round(value, 6) if isinstance(value, float) else value


def gguf_sampling(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The SamplingParams fields a GGUF's metadata sets (field name -> value). A value the runtime would
    reject (top_p 0, an unreadable number) is left out with a warning: a model file's suggestion must
    not stop anyone from using the model."""
    out: dict[str, Any] = {}
    for key, (name, parser) in GGUF_SAMPLING_KEYS.items():
        if key not in metadata:
            continue
        try:
            value = _parse(parser, metadata[key])
            SamplingParams(**{name: value})
        except (TypeError, ValueError, EngineError) as exc:
            logger.warning("ignoring the model's %s = %r (%s)", key, metadata[key], exc)
            continue
        out[name] = value
    return out


def sampling_defaults(metadata: Mapping[str, Any], base: SamplingParams | None = None) -> SamplingParams:
    """`base` (the seed's defaults when None) with the GGUF's sampling settings in place of its own."""
    return (base or SamplingParams()).replace(**gguf_sampling(metadata))


def apply_model_defaults(params: SamplingParams, metadata: Mapping[str, Any],
                         explicit: Iterable[str] = ()) -> SamplingParams:
    """`params` with the GGUF's settings for every field the user did not set `explicit`ly (by field name,
    e.g. the click options whose ParameterSource is not DEFAULT)."""
    chosen = set(explicit)
    return params.replace(**{k: v for k, v in gguf_sampling(metadata).items() if k not in chosen})
