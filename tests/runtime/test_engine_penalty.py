"""The repetition penalty in the engine against transformers' `repetition_penalty` (the seed's demo setting).

transformers penalizes every token of the sequence, prompt included; our engine does the same with
repeat_last_n = -1. Greedy decoding on SmolLM2's F32 conversion must then pick the same tokens as
transformers on the checkpoint. (The penalty arithmetic itself is compared bit for bit with llama.cpp's
sampler in test_logit_edits.py.)
"""

from __future__ import annotations

import pytest

from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings

pytestmark = pytest.mark.slow

PROMPT = "Once upon a time, in a small village, there lived"
N_NEW = 24


def transformers_greedy(hf_dir, prompt_ids: list[int], penalty: float) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), torch_dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=N_NEW, min_new_tokens=N_NEW,
                             do_sample=False, repetition_penalty=penalty, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize("penalty", [1.3, 2.0])
def test_whole_sequence_penalty_follows_transformers(penalty, smollm2_hf, converted):
    gguf = converted(smollm2_hf, "f32")
    with Engine(gguf, EngineSettings(n_ctx=256, n_parallel=1, n_threads=2)) as engine:
        prompt = engine.tokenize(PROMPT, add_bos=engine.add_bos)
        params = SamplingParams(temperature=0.0, repeat_penalty=penalty, repeat_last_n=-1, max_tokens=N_NEW)
        finished = engine.submit(prompt, params).text()[1]
        plain = engine.submit(prompt, params.replace(repeat_penalty=1.0)).text()[1]
    want = transformers_greedy(smollm2_hf, prompt, penalty)
    assert list(finished.tokens) == want
    assert list(plain.tokens) != want  # the penalty changed the answer, so the comparison means something
