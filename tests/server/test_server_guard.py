"""API key enforcement, request validation and limits of a real `lcpp-zh serve`, plus /health while loading.

Every refusal must come in OpenAI's error shape with the right status; the openai client must map them to
its typed exceptions.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from server_harness import start_server, wait_ready

pytestmark = pytest.mark.slow

KEY = "s3cret-key"
ENDLESS = 'root ::= "ab" root'


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([str(smollm2_gguf), "--parallel", "2", "--ctx", "512", "--threads", "2",
                        "--max-body-bytes", "4096", "--no-embeddings"], tmp_path_factory.mktemp("serve-guard"),
                       api_key=KEY)
    yield srv
    srv.stop()


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def post(server, path: str, key: str | None = KEY, method: str = "POST", **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{server.url}{path}", headers=headers, timeout=300, **kwargs)


@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                                         ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
                                         ("POST", "/generate"), ("GET", "/metrics"), ("POST", "/tokenize"),
                                         ("POST", "/detokenize"), ("GET", "/v1/templates")])
def test_every_route_needs_the_key(server, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.request(method, f"{server.url}{path}", headers=headers, json={}, timeout=30)
        assert r.status_code == 401, (path, headers)
        assert error_of(r)["type"] == "authentication_error"


def test_health_and_page_are_open(server):
    assert httpx.get(f"{server.url}/health").status_code == 200
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "<title>" in page.text


def test_openai_client_with_and_without_key(server):
    good = openai.OpenAI(base_url=server.v1, api_key=KEY, max_retries=0)
    r = good.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.choices[0].message.content is not None
    bad = openai.OpenAI(base_url=server.v1, api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize("body,status,param", [
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 7}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
    ({}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 3}, 400, "n"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.tool_call_id"),  # tool results need an id
    ({"messages": [{"role": "user", "content": "x"}], "model": "gpt-4"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}, 400,
     "response_format"),
])
def test_bad_chat_bodies(server, body, status, param):
    r = post(server, "/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    assert error_of(r)["param"] == param


def test_invalid_json_is_400(server):
    r = httpx.post(f"{server.url}/v1/completions", content=b'{"prompt": "x",',
                   headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    assert "JSON" in error_of(r)["message"]


def test_body_over_the_limit_is_413(server):
    r = post(server, "/v1/completions", json={"prompt": "x" * 5000})
    assert r.status_code == 413
    assert "4096" in error_of(r)["message"]

    def chunks():  # no Content-Length: the limit must hold for chunked bodies too
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}'

    r = httpx.post(f"{server.url}/v1/completions", content=chunks(),
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413


def test_prompt_too_long_for_the_slot_is_400(server):
    # 512 tokens of context, shared by the 2 slots: one request may hold all of it, no more.
    r = post(server, "/v1/completions", json={"prompt": "hello " * 600, "max_tokens": 4})
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "context_length_exceeded" and "too long" in err["message"]


def test_max_tokens_is_capped_by_the_context(server):
    # One request may use the whole KV cache (shared by the slots): --ctx 512, whatever --parallel is.
    (card,) = post(server, "/v1/models", method="GET").json()["data"]
    assert card["n_ctx_slot"] == 512
    r = post(server, "/v1/completions", json={"prompt": "Hi", "max_tokens": 100000, "grammar": ENDLESS})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert 500 <= usage["prompt_tokens"] + usage["completion_tokens"] <= 512


def test_embeddings_switched_off_is_400(server):
    r = post(server, "/v1/embeddings", json={"input": "你好"})
    assert r.status_code == 400
    assert "embeddings" in error_of(r)["message"]


def test_token_ids_out_of_range_are_400(server):
    r = post(server, "/detokenize", json={"tokens": [1, 10**9]})
    assert r.status_code == 400
    r = post(server, "/v1/completions", json={"prompt": [5, -3], "max_tokens": 2})
    assert r.status_code == 400


def test_health_is_503_while_loading(smollm2_gguf, tmp_path):
    # Several copies load one after the other, which keeps the loading window open long enough to see.
    args = [f"m{i}={smollm2_gguf}" for i in range(4)] + ["--threads", "2", "--ctx", "512", "--parallel", "1"]
    srv = start_server(args, tmp_path, wait=False)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and 200 not in seen:
            try:
                r = httpx.get(f"{srv.url}/health", timeout=2)
            except httpx.HTTPError:
                assert srv.process.poll() is None, srv.log()
                time.sleep(0.01)
                continue
            seen.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["status"] == "loading"
        wait_ready(srv)
        assert 503 in seen and seen[-1] == 200
    finally:
        srv.stop()
