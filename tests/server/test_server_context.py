"""The whole context for one request through a real `lcpp-zh serve --ctx 8192 --parallel 4` (SmolLM2, trained
for 8192 tokens): a 6,000-token request is answered with the default f16 KV and with q8_0 KV and flash
attention, a request larger than the whole cache is a clear 400, and --context-overflow truncate-middle drops
old turns of a long chat history and says so, where the default refuses it."""

from __future__ import annotations

import httpx
import openai
import pytest
from server_harness import start_server

pytestmark = pytest.mark.slow

BASE = ["--ctx", "8192", "--parallel", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def f16_server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", *BASE], tmp_path_factory.mktemp("serve-f16"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def q8_server(smollm2_gguf, tmp_path_factory):
    srv = start_server([f"smol={smollm2_gguf}", *BASE, "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
                        "--flash-attn", "on"], tmp_path_factory.mktemp("serve-q8"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def truncating_server(smollm2_gguf, tmp_path_factory):
    # A small context, so that the kept history is quick to evaluate on a small machine.
    srv = start_server([f"smol={smollm2_gguf}", "--ctx", "1024", "--parallel", "1", "--threads", "1",
                        "--context-overflow", "truncate-middle"], tmp_path_factory.mktemp("serve-truncate"))
    yield srv
    srv.stop()


def _tokens(server, text: str) -> int:
    return len(httpx.post(f"{server.url}/tokenize", json={"content": text}, timeout=60).json()["tokens"])


def _document(server, n_tokens: int) -> str:
    sentence = "The river runs past the old mill, under three bridges, to the market square. "
    per = _tokens(server, sentence * 10) / 10
    return sentence * int(n_tokens / per)


@pytest.mark.parametrize("which", ["f16_server", "q8_server"])
def test_a_6000_token_request_is_answered(which, request):
    server = request.getfixturevalue(which)
    client = openai.OpenAI(base_url=server.v1, api_key="none", max_retries=0, timeout=600)
    document = _document(server, 6100)
    reply = client.chat.completions.create(
        model="smol", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": document + "\nWhere does the river run?"}])
    assert reply.usage.prompt_tokens > 6000
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content.strip()


def test_a_request_larger_than_the_cache_is_a_400(f16_server):
    client = openai.OpenAI(base_url=f16_server.v1, api_key="none", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="smol", prompt=_document(f16_server, 9000), max_tokens=4)
    assert "prompt is too long" in str(info.value) and "8192" in str(info.value)
    assert httpx.get(f"{f16_server.url}/health", timeout=10).status_code == 200


def _long_history(server, n_turns: int, turn_tokens: int) -> list[dict]:
    turn = _document(server, turn_tokens)
    messages = [{"role": "system", "content": "You answer in one word."}]
    for i in range(n_turns):
        messages += [{"role": "user", "content": f"Turn {i}. {turn}"}, {"role": "assistant", "content": "Noted."}]
    return messages + [{"role": "user", "content": "Which turn is this?"}]


def test_context_overflow_truncate_middle_drops_old_turns_and_says_so(truncating_server, f16_server):
    messages = _long_history(truncating_server, 12, 150)  # about 1,900 tokens for a context of 1024
    r = httpx.post(f"{truncating_server.v1}/chat/completions", timeout=600,
                   json={"model": "smol", "messages": messages, "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text[:300]
    dropped = int(r.headers["X-Context-Truncated"])
    usage = r.json()["usage"]
    # Whole turns (user + assistant) go, the system prompt and the latest question stay.
    assert usage["truncated_messages"] == dropped and dropped % 2 == 0 and dropped >= 12
    assert usage["prompt_tokens"] <= 1024 - 4
    # The default (error) refuses a history beyond the context.
    too_long = _long_history(f16_server, 12, 800)  # about 9,700 tokens for 8192
    refused = httpx.post(f"{f16_server.v1}/chat/completions", timeout=600,
                         json={"model": "smol", "messages": too_long, "max_tokens": 4})
    assert refused.status_code == 400 and "prompt is too long" in refused.text
