"""Llama 3.1-style RoPE scaling (`rope_type: llama3`): the per-frequency factors llama.cpp reads from a
`rope_freqs.weight` tensor. Computed in float32 with the same operations, in the same order, as llama.cpp's
converter computes them in torch, so the tensor is bit-identical.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def llama3_rope_factors(params: dict[str, Any], head_dim: int) -> np.ndarray:
    """Frequency factors: 1 for short wavelengths, `factor` for long ones, a smooth blend in between."""
    base = params.get("rope_theta", 10000.0)
    factor = params.get("factor", 8.0)
    low_freq_factor = params.get("low_freq_factor", 1.0)
    high_freq_factor = params.get("high_freq_factor", 4.0)
    old_context = params.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    freqs = np.float32(1.0) / (np.float32(base) ** exponents)
    factors = []
    for freq in freqs:
        wavelen = np.float32(2 * math.pi) / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            smooth = (np.float32(old_context) / wavelen - np.float32(low_freq_factor)) / np.float32(
                high_freq_factor - low_freq_factor)
            factors.append(np.float32(1) / ((np.float32(1) - smooth) / np.float32(factor) + smooth))
    return np.array(factors, dtype=np.float32)
