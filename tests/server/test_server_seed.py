"""The seed's API on a real server started with the seed's own flags: POST /generate with accelerate_client.py's body.

Also the service routes (/health, /metrics) and start-up failures, which must be one-line errors.
"""

from __future__ import annotations

import json
import re
import urllib.request

import httpx
import pytest
from server_harness import free_port, start_server

pytestmark = pytest.mark.slow


def seed_body(history: list[dict[str, str]], max_new_tokens: int = 2048) -> dict:
    """Exactly what the seed's accelerate_client.py sends."""
    return {
        "system_prompt": "",
        "history": history,
        "n": 1,
        "best_of": 1,
        "presence_penalty": 1.2,
        "frequency_penalty": 0.2,
        "temperature": 0.3,
        "top_p": 0.95,
        "top_k": 50,
        "use_beam_search": False,
        "stop": [],
        "ignore_eos": False,
        "logprobs": None,
        "max_new_tokens": max_new_tokens,
    }


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server(["--model_path", str(smollm2_gguf), "--gpus", "0", "--infer_dtype", "int8",
                        "--model_source", "llama2_chinese", "--threads", "2", "--ctx", "2048"],
                       tmp_path_factory.mktemp("serve-seed"))
    yield srv
    srv.stop()


def test_seed_flags_pick_the_llama2_chinese_template(server):
    models = httpx.get(f"{server.v1}/models").json()["data"]
    assert [(m["id"], m["template"]) for m in models] == [("SmolLM2-135M-Instruct.Q4_1", "llama2-chinese")]


def test_generate_answers_like_the_seed(server):
    # The seed client uses urllib with exactly this body and header.
    request = urllib.request.Request(f"{server.url}/generate", headers={"Content-Type": "application/json"},
                                     data=json.dumps(seed_body([{"role": "Human", "content": "怎么去北京"}], 64)).encode())
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        result = json.loads(response.read().decode("utf-8"))
    assert set(result) == {"response", "status", "time"}
    assert result["status"] == 200
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", result["time"])
    assert isinstance(result["response"], str) and result["response"].strip()
    # The template's stop strings end the answer before the model starts the next turn. (No U+FFFD check
    # here: a sampled answer in a foreign chat format may contain byte sequences that are not UTF-8 at all;
    # that split characters are never broken is tested on streams in test_server_concurrency.)
    assert "Human:" not in result["response"]


def test_generate_multi_turn_with_the_clients_spelling(server):
    history = [{"role": "Human", "content": "如何去北京"}, {"role": "Assitant", "content": "乘坐飞机或者轮船"},
               {"role": "Human", "content": "怎么回来呢"}]
    r = httpx.post(f"{server.url}/generate", json=seed_body(history, 32), timeout=120)
    assert r.status_code == 200 and r.json()["status"] == 200


def test_generate_counts_the_rendered_prompt(server):
    """The prompt the server builds is the llama2-chinese one: its token count shows in /metrics."""
    label = 'model="SmolLM2-135M-Instruct.Q4_1"'
    before = server.metric("lcpp_zh_prompt_tokens_total", label)
    history = [{"role": "Human", "content": "你好"}]
    assert httpx.post(f"{server.url}/generate", json=seed_body(history, 4), timeout=120).status_code == 200
    added = server.metric("lcpp_zh_prompt_tokens_total", label) - before

    def tok(text: str) -> int:
        return len(httpx.post(f"{server.url}/tokenize", json={"content": text}).json()["tokens"])

    # <s>Human: 你好\n</s><s>Assistant: with <s>, </s> as single BOS/EOS tokens.
    assert added == 3 + tok("Human: 你好\n") + tok("Assistant: ")


def test_generate_bad_history_is_a_clear_error(server):
    r = httpx.post(f"{server.url}/generate", json=seed_body([{"role": "Robot", "content": "hi"}]))
    assert r.status_code == 400
    assert "Robot" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/generate", json={"history": []})
    assert r.status_code == 400


def test_health_and_metrics(server):
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("lcpp_zh_http_requests_total", "lcpp_zh_completion_tokens_total",
                 "lcpp_zh_time_to_first_token_seconds_count", "lcpp_zh_tokens_per_second_count"):
        assert name in text
    assert re.search(r'^lcpp_zh_http_requests_total\{route="/generate",status="200"\} [1-9]', text, re.M)
    assert re.search(r"^lcpp_zh_engine_\w+\{model=", text, re.M)


def test_missing_model_is_a_one_line_error(run_cli, tmp_path):
    result = run_cli("serve", tmp_path / "missing.gguf", "--port", free_port(), timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in result.stderr


def test_corrupt_gguf_is_a_one_line_error(run_cli, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    result = run_cli("serve", bad, "--port", free_port(), timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_one_line_error(run_cli, server, smollm2_gguf):
    result = run_cli("serve", smollm2_gguf, "--port", server.port, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{server.port}: Address already in use"]
