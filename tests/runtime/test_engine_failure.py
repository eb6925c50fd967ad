"""An engine whose thread fails: every request it was serving ends with an error, and every later request is
refused at once (never queued on a thread that will not come back). Real llama.cpp with SmolLM2; the
failure is injected into the decode call, where a C-level error would surface.
"""

from __future__ import annotations

import pytest

from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.engine import Engine
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.settings import EngineSettings


# The engine thread ends by raising, which pytest reports as an unhandled thread exception: that is the point.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_failed_engine_thread_fails_fast(smollm2_gguf):
    with Engine(smollm2_gguf, EngineSettings(n_ctx=512, n_parallel=2, n_threads=2)) as engine:
        tokens = engine.tokenize("Hello", add_bos=engine.add_bos)
        text, finished = engine.generate(tokens, SamplingParams(max_tokens=4))
        assert finished.reason == "length" and engine.alive

        def broken_decode(batch):
            raise RuntimeError("injected failure")

        engine._scheduler.backend.decode = broken_decode
        _, finished = engine.submit(tokens, SamplingParams(max_tokens=4)).text()
        assert finished.reason == "error" and "injected failure" in finished.error
        engine.wait_stopped()
        assert not engine.alive
        with pytest.raises(EngineError, match="stopped"):
            engine.submit(tokens, SamplingParams(max_tokens=4))
