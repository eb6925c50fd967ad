"""Every list and string a client sends to a real `lcpp-zh serve` is bounded: past each limit the answer is a
400 in OpenAI's shape naming the field, and just inside it the request is served. The server stays healthy.
"""

from __future__ import annotations

import httpx
import pytest
from server_harness import start_server

from lcpp_zh.server import schemas

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([str(smollm2_gguf), "--parallel", "2", "--ctx", "1024", "--threads", "2",
                        "--max-body-bytes", str(8 * 1024 * 1024)], tmp_path_factory.mktemp("serve-limits"))
    yield srv
    srv.stop()


def chat(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


def refused(server, path: str, body: dict, param: str) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert r.status_code == 400, (path, param, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and param in (error["param"] or ""), error
    return error


def served(server, path: str, body: dict) -> dict:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, (path, r.text[:300])
    return r.json()


def test_embedding_inputs(server):
    refused(server, "/v1/embeddings", {"input": ["a"] * (schemas.MAX_EMBEDDING_INPUTS + 1)}, "input")
    body = served(server, "/v1/embeddings", {"input": ["a", "b"]})
    assert len(body["data"]) == 2
    # A single long string is one input, not a list over the limit.
    text = "hello world " * 180  # 2,160 characters, about 360 tokens: within a slot's 512
    assert len(text) > schemas.MAX_EMBEDDING_INPUTS
    served(server, "/v1/embeddings", {"input": text})


def test_n_and_stop_strings(server):
    refused(server, "/v1/chat/completions", chat(n=2), "n")
    refused(server, "/v1/chat/completions", chat(stop=[f"s{i}" for i in range(schemas.MAX_STOP_STRINGS + 1)]), "stop")
    refused(server, "/v1/chat/completions", chat(stop=["x" * (schemas.MAX_STOP_CHARS + 1)]), "stop")
    served(server, "/v1/chat/completions", chat(stop=[f"s{i}" for i in range(schemas.MAX_STOP_STRINGS)]))


def test_logit_bias_entries(server):
    many = {str(i): 1.0 for i in range(schemas.MAX_LOGIT_BIAS_TOKENS + 1)}
    refused(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "logit_bias": many}, "logit_bias")
    refused(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "logit_bias": {str(10**30): 1}}, "")


def test_messages_and_seed_and_top_k(server):
    too_many = [{"role": "user", "content": "x"}] * (schemas.MAX_MESSAGES + 1)
    refused(server, "/v1/chat/completions", {"messages": too_many}, "messages")
    refused(server, "/v1/chat/completions", chat(top_k=2**40), "top_k")
    served(server, "/v1/chat/completions", chat(seed=2**64 - 1))
    served(server, "/v1/chat/completions", chat(seed=-(2**63)))


def test_tokenize_and_detokenize_bodies(server):
    refused(server, "/tokenize", {"content": "字" * (schemas.MAX_TEXT_CHARS + 1)}, "content")
    refused(server, "/detokenize", {"tokens": [1] * (schemas.MAX_DETOKENIZE_TOKENS + 1)}, "tokens")
    refused(server, "/detokenize", {"tokens": [2**70]}, "tokens")
    assert served(server, "/detokenize", {"tokens": [1, 2, 3]})["content"] is not None


def test_grammar_size(server):
    refused(server, "/v1/chat/completions", chat(grammar="root ::= " + '"a" ' * (schemas.MAX_GRAMMAR_CHARS // 4 + 1)),
            "grammar")


def test_healthy_after_all(server):
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    assert "restarting it" not in server.log()
