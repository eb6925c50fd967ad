"""Our logit bias and repetition penalties against llama.cpp's own samplers (llama_sampler_init_logit_bias and
llama_sampler_init_penalties, run through llama-cpp-python on a token array): the logits must be bit-identical.
"""

from __future__ import annotations

import ctypes

import llama_cpp
import numpy as np
import pytest

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.logit_edits import LogitEdits
from lcpp_zh.runtime.sampling import SamplingParams

N_VOCAB = 3000


def llama_cpp_edits(logits: np.ndarray, params: SamplingParams, history: list[int], last_n: int) -> np.ndarray:
    """llama.cpp's logit-bias sampler, then its penalties sampler, after accepting `history`."""
    n = len(logits)
    data = (llama_cpp.llama_token_data * n)(*[llama_cpp.llama_token_data(i, float(v), 0.0)
                                              for i, v in enumerate(logits)])
    array = llama_cpp.llama_token_data_array(data, n, -1, False)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    try:
        if params.logit_bias:
            bias = (llama_cpp.llama_logit_bias * len(params.logit_bias))(
                *[llama_cpp.llama_logit_bias(t, b) for t, b in params.logit_bias.items()])
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_logit_bias(n, len(bias), bias))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_penalties(
            n, last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty))
        for token in history:
            llama_cpp.llama_sampler_accept(chain, token)
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
    finally:
        llama_cpp.llama_sampler_free(chain)
    out = np.empty(n, dtype=np.float32)
    for i in range(n):
        assert data[i].id == i  # neither sampler reorders the array
        out[i] = data[i].logit
    return out


def ours(logits: np.ndarray, params: SamplingParams, history: list[int]) -> np.ndarray:
    edited = logits.copy()
    edits = LogitEdits(params, N_VOCAB, history)
    edits.apply(edited)
    return edited


def random_case(seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(N_VOCAB) * 4).astype(np.float32)
    logits[rng.integers(0, N_VOCAB, 20)] = 0.0  # exact zeros take the multiply branch
    # Few distinct tokens, many repeats: counts above 1 matter for the frequency penalty.
    history = [int(t) for t in rng.integers(0, 200, 300)]
    return logits, history


CASES = [
    SamplingParams(repeat_penalty=1.3, repeat_last_n=64),  # the seed's settings
    SamplingParams(repeat_penalty=1.1, repeat_last_n=1),
    SamplingParams(repeat_penalty=1.0, frequency_penalty=0.7, presence_penalty=0.4, repeat_last_n=256),
    SamplingParams(repeat_penalty=0.8, frequency_penalty=-0.3, presence_penalty=1.5, repeat_last_n=32),
    # Bias and penalty on the same tokens: the order (bias first) shows.
    SamplingParams(repeat_penalty=1.3, repeat_last_n=64, logit_bias={5: -100.0, 7: 2.5, 150: 1.25, 2999: 3.0}),
    SamplingParams(repeat_penalty=1.0, repeat_last_n=64, logit_bias={1: -100.0, 2: 0.5}),
]


@pytest.mark.parametrize("params", CASES, ids=range(len(CASES)))
@pytest.mark.parametrize("seed", [0, 1])
def test_bit_identical_to_llama_cpp_samplers(params, seed):
    logits, history = random_case(seed)
    want = llama_cpp_edits(logits, params, history, params.repeat_last_n)
    got = ours(logits, params, history)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert not np.array_equal(got, logits)  # the case really edits something


def test_whole_sequence_window():
    """repeat_last_n = -1 penalizes every token seen (llama.cpp's sampler would clamp -1 to 0, i.e. off)."""
    logits, history = random_case(2)
    params = SamplingParams(repeat_penalty=1.3, repeat_last_n=-1)
    want = llama_cpp_edits(logits, params, history, last_n=len(history))
    assert np.array_equal(ours(logits, params, history).view(np.uint32), want.view(np.uint32))


def test_window_slides_as_tokens_are_accepted():
    logits, _ = random_case(3)
    params = SamplingParams(repeat_penalty=1.5, frequency_penalty=0.2, repeat_last_n=8)
    history = [1, 2, 3, 1, 4, 5, 6, 7, 8, 9, 10, 1, 11]
    edits = LogitEdits(params, N_VOCAB, history[:5])
    for token in history[5:]:
        edits.accept(token)
    got = logits.copy()
    edits.apply(got)
    want = llama_cpp_edits(logits, params, history, last_n=8)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_nothing_to_do_leaves_logits_alone():
    params = SamplingParams(repeat_penalty=1.0)
    edits = LogitEdits(params, N_VOCAB, [1, 2, 3])
    assert not edits.active


def test_bias_outside_the_vocabulary_is_refused():
    with pytest.raises(EngineError, match="logit_bias"):
        LogitEdits(SamplingParams(logit_bias={N_VOCAB: 1.0}), N_VOCAB)
