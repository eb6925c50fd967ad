"""Llama 3.1-style rope scaling: the converter computes `rope_freqs.weight` itself; it must match
llama.cpp's converter bit for bit, and llama.cpp must load and run the result."""

from __future__ import annotations

import gguf
import numpy as np

from lcpp_zh.convert.pipeline import convert_checkpoint

LLAMA3_ROPE = (("rope_type", "llama3"), ("factor", 8.0), ("low_freq_factor", 1.0), ("high_freq_factor", 4.0),
               ("original_max_position_embeddings", 64))


def test_llama3_rope_factors_match_reference(tiny_llama, reference_gguf, tmp_path):
    hf_dir = tiny_llama(rope_scaling=LLAMA3_ROPE, rope_theta=500000.0)
    # template none and the checkpoint's own sampling only: nothing lcpp-zh adds, so the whole file must match.
    ours = convert_checkpoint(hf_dir, tmp_path / "ours.gguf", outtype="f16", template="none", sampling="checkpoint")
    reference = reference_gguf(hf_dir, "f16")
    ours_reader, ref_reader = gguf.GGUFReader(ours), gguf.GGUFReader(reference)
    ours_freqs = next(t for t in ours_reader.tensors if t.name == "rope_freqs.weight")
    ref_freqs = next(t for t in ref_reader.tensors if t.name == "rope_freqs.weight")
    assert ours_freqs.data.tobytes() == ref_freqs.data.tobytes()
    # all three regimes of the formula occur: unscaled, fully scaled and blended frequencies
    values = np.asarray(ours_freqs.data)
    assert (values == 1.0).any() and (values == 8.0).any() and ((values > 1.0) & (values < 8.0)).any()
    assert ours.read_bytes() == reference.read_bytes()
