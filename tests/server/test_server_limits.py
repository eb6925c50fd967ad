"""Every list and string a client sends to a real `lcpp-zh serve` is bounded: past each limit the answer is a
400 in OpenAI's shape naming the field, and just inside it the request is served. The server stays healthy.
"""

from __future__ import annotations

import re

import httpx
import pytest
from server_harness import start_server

from lcpp_zh.runtime.grammar import MAX_GRAMMAR_BYTES
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


def padded_grammar(n_bytes: int) -> str:
    """A grammar allowing only "a", padded by a comment to exactly `n_bytes` UTF-8 bytes (字 is 3 bytes)."""
    head = 'root ::= "a"\n# '
    filler = n_bytes - len(head)
    grammar = head + "字" * (filler // 3) + "x" * (filler % 3)
    assert len(grammar.encode()) == n_bytes
    return grammar


def test_grammar_size_is_counted_in_bytes(server):
    limit = MAX_GRAMMAR_BYTES
    # Under the limit in characters, over it in bytes: refused, and the message says the unit.
    over = padded_grammar(limit + 1)
    assert len(over) < limit
    error = refused(server, "/v1/chat/completions", chat(grammar=over), "grammar")
    assert f"at most {limit} are accepted" in error["message"] and "bytes" in error["message"], error
    refused(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "grammar": over}, "grammar")
    body = served(server, "/v1/chat/completions", chat(grammar=padded_grammar(limit), temperature=0))
    assert body["choices"][0]["message"]["content"] == "a"


def test_status_lines_are_plain_and_routes_are_counted_by_template(server):
    ready = [line for line in server.log().splitlines() if "ready: " in line]
    assert ready and all(line.startswith("ready: ") for line in ready), ready  # no "WARNING lcpp_zh...:" prefix
    for path in ("/static/js/main.js", "/no/such/route", "/v1/models"):
        httpx.get(f"{server.url}{path}", timeout=10)
    counted = {labels.split(",")[0] for labels in re.findall(r'^lcpp_zh_http_requests_total\{(route="[^"]*"),',
                                                             httpx.get(f"{server.url}/metrics").text, re.M)}
    assert {'route="/static/{name:path}"', 'route="other"', 'route="/v1/models"'} <= counted, counted
    assert not any("/no/such" in label or "main.js" in label for label in counted), counted


def test_healthy_after_refused_requests(server):
    # Self-contained: one request past each kind of limit, then the server is still healthy and its runner
    # was never restarted.
    refused(server, "/v1/chat/completions", chat(n=2), "n")
    refused(server, "/v1/chat/completions", chat(grammar=padded_grammar(MAX_GRAMMAR_BYTES + 1)), "grammar")
    refused(server, "/v1/chat/completions", chat(top_k=2**40), "top_k")
    refused(server, "/detokenize", {"tokens": [2**70]}, "tokens")
    refused(server, "/tokenize", {"content": "字" * (schemas.MAX_TEXT_CHARS + 1)}, "content")
    assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"
    served(server, "/v1/chat/completions", chat())
    assert "restarting it" not in server.log()
