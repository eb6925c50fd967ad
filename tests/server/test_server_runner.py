"""The runner process of a real `lcpp-zh serve`: a runner killed by any signal ends its requests at once with
an OpenAI-shaped error, /health and /metrics say so, the runner comes back and the next request is served;
a runner that cannot load again is reported once and not restarted; SIGTERM lets requests finish.

The runner is killed from outside (SIGSEGV, SIGABRT, SIGKILL as the OOM killer does): whatever llama.cpp
does wrong ends in one of these.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time

import httpx
import psutil
import pytest
from server_harness import start_server

from lcpp_zh.common.net import wait_for

pytestmark = pytest.mark.slow


def runner_pids(server) -> list[int]:
    return [p.pid for p in psutil.Process(server.process.pid).children(recursive=True)]


def health(server) -> httpx.Response:
    return httpx.get(f"{server.url}/health", timeout=10)


def wait_health(server, status: str, timeout: float = 120.0) -> dict:
    last: list[dict] = [{}]

    def says() -> dict | None:
        last[0] = health(server).json()
        return last[0] if last[0].get("status") == status else None

    try:
        return wait_for(says, timeout=timeout, interval=0.1, what="/health")
    except TimeoutError:
        raise AssertionError(f"/health never said {status!r}; last: {last[0]}") from None


def banned_end_tokens(server) -> dict[str, int]:
    tokens = httpx.post(f"{server.url}/tokenize", json={"content": "<|im_end|><|endoftext|>"}, timeout=10).json()
    return {str(t): -100 for t in tokens["tokens"]}


def stream_lines(server, body: dict, started: threading.Event, lines: list[str]) -> None:
    with httpx.stream("POST", f"{server.v1}/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line:
                lines.append(line)
                started.set()


def start_stream(server, content: str, max_tokens: int) -> tuple[threading.Thread, list[str]]:
    """A streamed chat request (end tokens banned, so it runs to max_tokens) read by a thread; returns once
    its first chunk has arrived, with the thread and the SSE lines read so far."""
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "logit_bias": banned_end_tokens(server)}
    started, lines = threading.Event(), []
    reader = threading.Thread(target=stream_lines, args=(server, body, started, lines), daemon=True)
    reader.start()
    assert started.wait(60), "no first chunk"
    return reader, lines


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    srv = start_server([str(smollm2_gguf), "--parallel", "2", "--ctx", "1024", "--threads", "2",
                        "--no-embeddings"], tmp_path_factory.mktemp("serve-runner"))
    yield srv
    srv.stop()


def test_health_names_each_model_and_its_runner(server):
    body = health(server).json()
    assert body["status"] == "ok"
    ((alias, entry),) = body["models"].items()
    assert entry["state"] == "ready"
    assert len(runner_pids(server)) == 1


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT, signal.SIGKILL])
def test_a_dying_runner_ends_its_streams_and_comes_back(server, sig):
    restarts_before = server.metric("lcpp_zh_runner_restarts_total", f'model="{alias_of(server)}"')
    reader, lines = start_stream(server, "Tell me a long story.", 400)
    time.sleep(0.3)
    (pid,) = runner_pids(server)
    t0 = time.monotonic()
    os.kill(pid, sig)
    reader.join(30)
    assert not reader.is_alive(), "the stream hung after its runner died"
    assert time.monotonic() - t0 < 10
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert lines[-1] == "data: [DONE]"
    assert "runner stopped" in error["message"] and error["type"] == "server_error"
    # While it restarts: /health says so and a request is a 503 with Retry-After, never a hang.
    during = health(server)
    if during.status_code == 503:
        assert during.json()["status"] == "restarting"
        refused = httpx.post(f"{server.v1}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                             timeout=30)
        assert refused.status_code in (200, 503)
        if refused.status_code == 503:
            assert refused.headers["retry-after"] and refused.json()["error"]["code"] == "model_unavailable"
    wait_health(server, "ok")
    assert runner_pids(server) != [pid]
    answer = httpx.post(f"{server.v1}/chat/completions", timeout=60,
                        json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
    assert server.metric("lcpp_zh_runner_restarts_total", f'model="{alias_of(server)}"') == restarts_before + 1
    assert health(server).json()["models"][alias_of(server)]["restarts"] >= 1


def alias_of(server) -> str:
    return next(iter(health(server).json().get("models", {"?": None})))


def test_a_non_streaming_request_gets_an_openai_error(server):
    wait_health(server, "ok")
    body = {"messages": [{"role": "user", "content": "Count to one thousand."}], "max_tokens": 400,
            "logit_bias": banned_end_tokens(server)}
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(
        httpx.post(f"{server.v1}/chat/completions", json=body, timeout=60)))
    thread.start()
    time.sleep(1.0)
    os.kill(runner_pids(server)[0], signal.SIGKILL)
    thread.join(30)
    assert result and result[0].status_code == 500
    assert "runner stopped" in result[0].json()["error"]["message"]
    wait_health(server, "ok")


def test_a_runner_that_cannot_load_again_is_reported_once(smollm2_gguf, tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copy(smollm2_gguf, model)
    srv = start_server([str(model), "--parallel", "1", "--ctx", "512", "--threads", "2", "--no-embeddings"], tmp_path)
    try:
        with open(model, "r+b") as handle:  # the weights are gone: no runner can load this file again
            handle.truncate(model.stat().st_size // 2)
        os.kill(runner_pids(srv)[0], signal.SIGKILL)
        body = wait_health(srv, "error")
        (entry,) = body["models"].values()
        assert entry["state"] == "failed" and "could not be restarted" in entry["error"]
        time.sleep(2)
        assert runner_pids(srv) == [], "a runner that cannot load must not be restarted in a loop"
        assert srv.process.poll() is None
        refused = httpx.post(f"{srv.v1}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                             timeout=30)
        assert refused.status_code == 503
        assert srv.log().count("could not be restarted") == 1
    finally:
        srv.stop()


def test_sigterm_lets_a_stream_finish_then_exits_zero(smollm2_gguf, tmp_path):
    srv = start_server([str(smollm2_gguf), "--parallel", "1", "--ctx", "512", "--threads", "2", "--no-embeddings",
                        "--shutdown-timeout", "120"], tmp_path)  # room for a busy test machine
    reader, lines = start_stream(srv, "Write a poem.", 24)
    runners = runner_pids(srv)
    srv.process.send_signal(signal.SIGTERM)
    assert srv.process.wait(timeout=30) == 0
    reader.join(10)
    assert lines[-1] == "data: [DONE]"
    finish = [json.loads(line[6:]) for line in lines[:-1]][-1]["choices"][0]["finish_reason"]
    assert finish == "length", "the request in flight was cut instead of finishing"
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in runners)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/health", timeout=5)


def test_shutdown_timeout_cuts_what_runs_too_long(smollm2_gguf, tmp_path):
    srv = start_server([str(smollm2_gguf), "--parallel", "1", "--ctx", "1024", "--threads", "2", "--no-embeddings",
                        "--shutdown-timeout", "1"], tmp_path)
    reader, lines = start_stream(srv, "Write a long essay.", 900)
    t0 = time.monotonic()
    srv.process.send_signal(signal.SIGINT)
    assert srv.process.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 8
    reader.join(10)
    # Cut cleanly: an error event saying why, then [DONE], not a connection closed mid-chunk.
    assert lines[-1] == "data: [DONE]"
    assert "shutting down" in json.loads(lines[-2][6:])["error"]["message"]


def test_runner_survives_the_crash_table(smollm2_gguf, tmp_path):
    """The hostile requests that killed the server before: each answered, the server alive after."""
    srv = start_server([str(smollm2_gguf), "--parallel", "16", "--batch", "8", "--ctx", "4096", "--threads", "2",
                        "--no-embeddings"], tmp_path)
    try:
        chat = f"{srv.v1}/chat/completions"
        hi = [{"role": "user", "content": "hi"}]
        r = httpx.post(chat, json={"messages": hi, "grammar": 'root ::= "\\u0000"', "max_tokens": 4}, timeout=60)
        assert r.status_code in (400, 500) and set(r.json()) == {"error"}
        schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "string",
                                                                                "maxLength": 20000000}}}
        r = httpx.post(chat, json={"messages": hi, "response_format": schema, "max_tokens": 4}, timeout=60)
        assert r.status_code in (200, 400) and (r.status_code == 200 or r.json()["error"]["param"] == "response_format")

        async def sixteen() -> list[int]:
            async with httpx.AsyncClient(timeout=120) as client:
                replies = await asyncio.gather(*[client.post(chat, json={"messages": hi, "max_tokens": 8})
                                                 for _ in range(16)])
            return [reply.status_code for reply in replies]

        assert asyncio.run(sixteen()) == [200] * 16
        assert health(srv).json()["status"] == "ok"
        assert "restarting it" not in srv.log(), "a hostile request took the runner down"
    finally:
        srv.stop()


def test_runner_is_not_interrupted_by_a_terminal_ctrl_c(smollm2_gguf, tmp_path):
    """Ctrl-C at a terminal goes to the whole process group; the runner, in its own session, must not die
    before the server has let the requests finish."""
    srv = start_server([str(smollm2_gguf), "--parallel", "1", "--ctx", "512", "--threads", "2", "--no-embeddings"],
                       tmp_path)
    try:
        (pid,) = runner_pids(srv)
        assert os.getsid(pid) != os.getsid(srv.process.pid)
        os.killpg(srv.process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does to the foreground group
        assert srv.process.wait(timeout=30) == 0
    finally:
        if srv.process.poll() is None:
            srv.stop()
    assert not (psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
