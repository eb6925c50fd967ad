"""Many clients at once on a real `lcpp-zh serve`: simultaneous streams, disconnects, a full queue, Chinese text.

A grammar whose rule never reaches an accepting state (`root ::= "ab" root`) keeps the model from ending
early, so every stream must run to exactly max_tokens: a cut-off stream cannot pass for a finished one.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import openai
import pytest
from server_harness import start_server

from lcpp_zh.common.net import wait_for

pytestmark = pytest.mark.slow

ENDLESS = 'root ::= "ab" root'
# One CJK ideograph after another, never accepting: forces Chinese text split over byte-level BPE tokens.
ENDLESS_CHINESE = "root ::= [\u4e00-\u9fa5] root"
CJK = re.compile("^[\u4e00-\u9fa5]+$")
LABEL = 'model="SmolLM2-135M-Instruct.Q4_1"'


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    # 2048 tokens per slot: room for the long generations the disconnect tests cut short.
    srv = start_server([str(smollm2_gguf), "--parallel", "8", "--ctx", "16384", "--threads", "2"],
                       tmp_path_factory.mktemp("serve-concurrency"))
    yield srv
    srv.stop()


def wait_idle(server, timeout: float = 60.0) -> float:
    """Seconds until the engine reports no busy slot (fails the test after `timeout`)."""
    start = time.monotonic()
    try:
        wait_for(lambda: server.metric("lcpp_zh_engine_slots_busy", LABEL) == 0, timeout=timeout, interval=0.05,
                 what="slots busy")
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
    return time.monotonic() - start


def test_ten_simultaneous_streams_all_complete(server):
    """10 clients on 8 slots: every stream runs to max_tokens, and 8 of them really run side by side."""
    n_clients, max_tokens = 10, 24

    async def one(aclient, i: int) -> dict:
        stream = await aclient.completions.create(
            model="", prompt=f"Stream number {i}:", max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True}, extra_body={"grammar": ENDLESS})
        out = {"text": [], "finish": None, "used": None, "first": None}
        async for chunk in stream:
            if chunk.usage is not None:
                out["used"] = chunk.usage.completion_tokens
            for choice in chunk.choices:
                if choice.text and out["first"] is None:
                    out["first"] = time.monotonic()
                out["text"].append(choice.text)
                out["finish"] = choice.finish_reason or out["finish"]
        out["end"] = time.monotonic()
        return out

    async def run():
        async with openai.AsyncOpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=600) as aclient:
            return await asyncio.gather(*(one(aclient, i) for i in range(n_clients)))

    results = asyncio.run(run())
    assert len(results) == n_clients
    for out in results:
        text = "".join(out["text"])
        assert out["finish"] == "length"
        assert out["used"] == max_tokens
        assert text.startswith("abab") and set(text) == {"a", "b"}
    first_end = min(out["end"] for out in results)
    assert sum(out["first"] < first_end for out in results) >= 8  # all 8 slots streamed before any finished
    wait_idle(server)


def test_chinese_stream_has_no_replacement_characters(server):
    client = openai.OpenAI(base_url=server.v1, api_key="x", max_retries=0, timeout=120)
    deltas = []
    for chunk in client.chat.completions.create(
            model="", messages=[{"role": "user", "content": "请用中文介绍一下北京。"}], max_tokens=30, stream=True,
            extra_body={"grammar": ENDLESS_CHINESE}):
        for choice in chunk.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
    assert deltas
    assert all("\ufffd" not in d for d in deltas)
    assert all(CJK.match(d) for d in deltas), deltas
    text = "".join(deltas)
    # Byte-level BPE splits most ideographs over several tokens: the stream must have held those back whole.
    pieces = [len(httpx.post(f"{server.url}/tokenize", json={"content": ch}).json()["tokens"]) for ch in text]
    assert max(pieces) > 1
    assert len(text) <= 30


def generated(server) -> float:
    return server.metric("lcpp_zh_engine_generated_tokens_total", LABEL)


def test_client_disconnect_frees_the_slot(server):
    cancelled, before = server.metric("lcpp_zh_client_cancelled_total", LABEL), generated(server)
    body = {"prompt": "Go on forever:", "max_tokens": 3000, "stream": True, "grammar": ENDLESS}
    with httpx.stream("POST", f"{server.v1}/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 5:
                break
    wait_idle(server)
    # Left alone it would run to the slot's end (about 2000 tokens); leaving stops it within a few steps.
    assert generated(server) - before < 1000
    assert server.metric("lcpp_zh_client_cancelled_total", LABEL) == cancelled + 1


def test_non_streaming_client_that_leaves_frees_the_slot(server):
    before = generated(server)
    body = {"prompt": "Go on forever:", "max_tokens": 3000, "grammar": ENDLESS}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.v1}/completions", json=body, timeout=httpx.Timeout(60, read=1.0))
    wait_idle(server)
    assert generated(server) - before < 1000


@pytest.fixture(scope="module")
def tiny_server(smollm2_gguf, tmp_path_factory):
    srv = start_server([str(smollm2_gguf), "--parallel", "1", "--queue", "1", "--ctx", "1024", "--threads", "2"],
                       tmp_path_factory.mktemp("serve-queue"))
    yield srv
    srv.stop()


def test_full_queue_answers_503_with_retry_after(tiny_server):
    body = {"prompt": "Go on:", "max_tokens": 600, "stream": True, "grammar": ENDLESS}
    with httpx.Client(timeout=60) as http:
        running = http.stream("POST", f"{tiny_server.v1}/completions", json=body)
        first = running.__enter__()
        assert first.status_code == 200
        lines = first.iter_lines()  # kept referenced: a dropped iterator would close the connection
        next(lines)  # it holds the only slot now
        queued_client = openai.OpenAI(base_url=tiny_server.v1, api_key="x", max_retries=0, timeout=120)

        async def queued() -> str:
            async with openai.AsyncOpenAI(base_url=tiny_server.v1, api_key="x", max_retries=0, timeout=120) as ac:
                r = await ac.completions.create(model="", prompt="Hi", max_tokens=5, extra_body={"grammar": ENDLESS})
                return r.choices[0].text

        async def scenario() -> tuple[str, int, str | None]:
            waiting = asyncio.ensure_future(queued())
            await asyncio.sleep(1.0)  # the second request now waits in the queue
            try:
                await asyncio.to_thread(queued_client.completions.create, model="", prompt="x", max_tokens=5)
            except openai.APIStatusError as exc:
                status, retry = exc.status_code, exc.response.headers.get("retry-after")
            else:
                status, retry = 200, None
            first.close()  # leave: the slot comes free and the queued request runs
            return await waiting, status, retry

        text, status, retry = asyncio.run(scenario())
        running.__exit__(None, None, None)
    assert status == 503
    assert retry is not None and int(retry) >= 1
    assert text and re.fullmatch("(ab)*a?", text)
