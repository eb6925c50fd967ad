"""Leases through a real `lcpp-zh serve --keep-alive 0`: a model is unloaded as soon as no request holds it, so
a lease that is never released shows as a model that stays loaded. Every way a response ends (success, a 4xx
raised after the model was taken, a finished stream, a client that leaves mid-stream) must release it.
"""

from __future__ import annotations

import httpx
import pytest
from server_harness import start_server

from lcpp_zh.common.net import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", "--keep-alive", "0", "--parallel", "1", "--ctx", "512",
                        "--threads", "2", "--no-embeddings"], tmp_path_factory.mktemp("serve-leases"))
    yield srv
    srv.stop()


def status(server) -> str:
    (entry,) = [m for m in httpx.get(f"{server.v1}/models", timeout=10).json()["data"] if m["id"] == "smol"]
    return entry["status"]


def wait_unloaded(server) -> None:
    try:
        wait_for(lambda: status(server) == "available", timeout=30, interval=0.1, what="the unload")
    except TimeoutError:
        raise AssertionError(f"the model stayed {status(server)!r}: a lease was never released") from None


def chat(stream: bool, max_tokens: int = 4) -> dict:
    return {"model": "smol", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens,
            "stream": stream}


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/tokenize", {"model": "smol", "content": "你好"}, 200),
    ("/detokenize", {"model": "smol", "tokens": [10 ** 9]}, 400),  # refused after the model was taken
    ("/v1/chat/completions", chat(stream=False), 200),
    ("/v1/chat/completions", chat(stream=True), 200),
], ids=["tokenize", "detokenize-400", "chat", "chat-stream"])
def test_every_response_releases_its_model(server, path, body, code):
    wait_unloaded(server)  # the preloaded model expires at once with --keep-alive 0
    answer = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert answer.status_code == code, answer.text
    if body.get("stream"):
        assert answer.text.rstrip().endswith("data: [DONE]")
    wait_unloaded(server)


def test_a_stream_holds_its_model_until_its_client_leaves(server):
    wait_unloaded(server)
    end_tokens = httpx.post(f"{server.url}/tokenize", json={"model": "smol", "content": "<|im_end|><|endoftext|>"},
                            timeout=60).json()["tokens"]
    body = {**chat(stream=True, max_tokens=400), "logit_bias": {str(t): -100 for t in end_tokens}}
    with httpx.stream("POST", f"{server.v1}/chat/completions", json=body, timeout=120) as reply:
        lines = reply.iter_lines()
        for _ in range(3):  # a few chunks in: the answer is being generated
            next(lines)
        assert status(server) == "loaded", "a model was unloaded under a stream in flight"
    # The client has gone mid-answer: the server notices, ends the generation and releases the model.
    wait_unloaded(server)
