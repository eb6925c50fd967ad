"""llama.cpp RPC workers on loopback: `lcpp-zh worker` and llama.cpp's own ggml-rpc-server serving CPU devices,
a model split over the local CPU and two workers (greedy text identical to the local run, logits within NMSE
1e-6 with an F32 KV cache), llama-server --rpc on our worker, the endpoint probe's one-line errors, and a worker
killed mid-generation. Everything that computes through RPC runs in a child process: llama.cpp aborts it when a
worker goes away."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fixtures.llama_tools import llama_tool
from lcpp_zh.common.net import free_port, wait_for, wait_http_ready
from lcpp_zh.errors import EngineError
from lcpp_zh.runtime.rpc import RpcError, exposure_warning, parse_endpoints, probe_worker

CLI = [sys.executable, "-m", "lcpp_zh.cli"]
PROMPT = "The three largest cities of France are"

# Logits of the prompt and of 8 greedy steps after it, local or split by the planner over the CPU and workers.
LOGITS_SCRIPT = r"""
import sys
import llama_cpp, numpy as np
from lcpp_zh.runtime.devices import list_devices, resolve_devices
from lcpp_zh.runtime.llama_api import Batch, LlamaContext, LlamaModel
from lcpp_zh.runtime.offload import plan_offload, read_model_sizes
from lcpp_zh.runtime.rpc import parse_endpoints, register_workers

path, endpoints, out, prompt = sys.argv[1:5]
kwargs = {}
if parse_endpoints(endpoints):
    register_workers(parse_endpoints(endpoints))
    plan = plan_offload(read_model_sizes(path), list_devices(), 256)
    print(plan.describe(), file=sys.stderr)
    kwargs = dict(gpu_layers=plan.n_gpu_layers, tensor_split=plan.tensor_split, devices=resolve_devices(plan.devices))
model = LlamaModel(path, **kwargs)
ctx = LlamaContext(model, n_ctx=256, n_batch=64, n_seq=1, n_threads=1, kv_type="f32")
tokens = model.tokenize(prompt, add_bos=True)
batch, rows = Batch(64), []
for i, t in enumerate(tokens):
    batch.add(t, i, 0, True)
for step in range(9):
    assert ctx.decode(batch) == 0
    for i in range(batch.n):
        rows.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx.ctx, i), (model.n_vocab,)).copy())
    batch.clear()
    batch.add(int(np.argmax(rows[-1])), len(tokens) + step, 0, True)
np.save(out, np.stack(rows))
"""


def _wait_for_worker(proc: subprocess.Popen, endpoint: str, timeout: float = 60) -> None:
    def answers() -> bool:
        try:
            return probe_worker(endpoint, timeout=2) is not None
        except RpcError:
            return False

    wait_for(answers, timeout=timeout, process=proc, what=f"worker {endpoint}")


def _start(command: list[str], port: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    endpoint = f"127.0.0.1:{port}"
    _wait_for_worker(proc, endpoint)
    return proc, endpoint


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def our_worker(port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    return _start([*CLI, "worker", "--port", str(port), "--threads", "1"], port)


@pytest.fixture(scope="module")
def two_workers() -> Iterator[list[str]]:
    procs = [our_worker(), our_worker()]
    yield [endpoint for _, endpoint in procs]
    for proc, _ in procs:
        _stop(proc)


@pytest.fixture
def worker() -> Iterator[tuple[subprocess.Popen, str]]:
    proc, endpoint = our_worker()
    yield proc, endpoint
    _stop(proc)


def _generate(model: Path, *extra: str) -> tuple[str, str]:
    out = subprocess.run([*CLI, "generate", str(model), PROMPT, "--raw", "--temperature", "0", "--repeat-penalty",
                          "1", "--max-new-tokens", "24", "--ctx", "512", "--threads", "1", *extra],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def _logits(model: Path, endpoints: list[str], tmp_path: Path) -> tuple[np.ndarray, str]:
    out = tmp_path / f"logits-{len(endpoints)}-{time.monotonic_ns()}.npy"
    run = subprocess.run([sys.executable, "-c", LOGITS_SCRIPT, str(model), ",".join(endpoints), str(out), PROMPT],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return np.load(out), run.stderr


def _nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum((a - b) ** 2) / np.sum(b ** 2))


def test_devices_shows_the_workers_devices(two_workers):
    out = subprocess.run([*CLI, "devices", "--rpc", ",".join(two_workers), "--json"], capture_output=True,
                         text=True, check=True)
    rpc = [d for d in json.loads(out.stdout) if d["backend"] == "RPC"]
    assert [(d["name"], d["description"]) for d in rpc] == [("RPC0", two_workers[0]), ("RPC1", two_workers[1])]
    assert all(d["total"] > 0 and 0 < d["free"] <= d["total"] for d in rpc)
    assert probe_worker(two_workers[0]).version == (7, 0, 0)


def test_split_over_cpu_and_two_workers_matches_the_local_run(smollm2_gguf, two_workers, tmp_path):
    local_text, _ = _generate(smollm2_gguf)
    split_text, log = _generate(smollm2_gguf, "--rpc", ",".join(two_workers))
    assert split_text == local_text and len(split_text.strip()) > 10
    plan_line = next(line for line in log.splitlines() if "layers offloaded" in line)
    assert f"on RPC0 {two_workers[0]} (free" in plan_line and f"on RPC1 {two_workers[1]} (free" in plan_line
    assert " on CPU" in plan_line and plan_line.startswith("20/30 layers offloaded: 10 on RPC0")
    local, _ = _logits(smollm2_gguf, [], tmp_path)
    split, log = _logits(smollm2_gguf, two_workers, tmp_path)
    assert "on RPC1" in log and local.shape == split.shape and local.shape[0] > 9
    assert _nmse(split, local) < 1e-6
    assert (split.argmax(axis=1) == local.argmax(axis=1)).all()


def test_llama_cpp_rpc_server_works_as_a_worker(smollm2_gguf, two_workers, tmp_path):
    port = free_port()
    theirs, endpoint = _start([str(llama_tool("ggml-rpc-server")), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                              port)
    try:
        mixed = [endpoint, two_workers[0]]
        local_text, _ = _generate(smollm2_gguf)
        split_text, log = _generate(smollm2_gguf, "--rpc", ",".join(mixed), "--gpu-layers", "all")
        assert split_text == local_text
        assert f"on RPC0 {endpoint}" in log and "on CPU" not in log
        local, _ = _logits(smollm2_gguf, [], tmp_path)
        split, _ = _logits(smollm2_gguf, mixed, tmp_path)
        assert _nmse(split, local) < 1e-6
    finally:
        _stop(theirs)


def _llama_server_completion(model: Path, rpc: str | None) -> str:
    port = free_port()
    command = [str(llama_tool("llama-server")), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "-c", "512", "-t", "1", "-np", "1", "-ngl", "99"]
    server = subprocess.Popen([*command, *(["--rpc", rpc] if rpc else [])], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_http_ready(f"http://127.0.0.1:{port}/health", 120, process=server)
        except RuntimeError as exc:
            raise AssertionError(f"{exc}: {server.stderr.read()}") from None
        body = json.dumps({"prompt": PROMPT, "n_predict": 16, "temperature": 0, "top_k": 1,
                           "cache_prompt": False}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            return json.loads(reply.read())["content"]
    finally:
        _stop(server)


def test_llama_server_rpc_uses_our_worker(smollm2_gguf, worker):
    proc, endpoint = worker
    remote = _llama_server_completion(smollm2_gguf, endpoint)
    assert remote == _llama_server_completion(smollm2_gguf, None) and remote.strip()
    probe_worker(endpoint)  # still serving after llama-server went away


def _serve_once(reply: bytes | None) -> tuple[str, threading.Thread]:
    """A TCP listener that reads one request and answers `reply` (None: says nothing and waits)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)
            else:
                time.sleep(3)
        listener.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return f"127.0.0.1:{listener.getsockname()[1]}", thread


def test_unreachable_and_foreign_endpoints_give_one_line_errors(smollm2_gguf):
    closed = f"127.0.0.1:{free_port()}"
    out = subprocess.run([*CLI, "devices", "--rpc", closed], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "cannot connect" in out.stderr
    http, _ = _serve_once(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    out = subprocess.run([*CLI, "generate", str(smollm2_gguf), "hi", "--rpc", http], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "not an RPC worker" in out.stderr
    silent, _ = _serve_once(None)
    with pytest.raises(RpcError, match="no answer to the handshake in 1 s"):
        probe_worker(silent, timeout=1)
    with pytest.raises(RpcError, match="HOST:PORT"):
        parse_endpoints("127.0.0.1")


def test_a_protocol_mismatch_names_both_versions():
    hello = struct.pack("<Q", 28) + bytes([6, 1, 0, 0]) + bytes(24)  # a worker of protocol 6.1.0
    endpoint, _ = _serve_once(hello)
    with pytest.raises(RpcError, match=r"protocol 6\.1\.0, this llama\.cpp speaks 7\.0\.0"):
        probe_worker(endpoint)


def test_worker_binds_loopback_and_warns_once_for_other_addresses():
    assert exposure_warning("127.0.0.1", 50052) is None and exposure_warning("localhost", 1) is None
    port = free_port()
    proc = subprocess.Popen([*CLI, "worker", "--host", "0.0.0.0", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_worker(proc, f"127.0.0.1:{port}")
    finally:
        _stop(proc)
    log = proc.stderr.read()
    assert log.count("warning:") == 1 and "no authentication" in log and f"ssh -N -L {port}:127.0.0.1:{port}" in log


def test_worker_on_a_taken_port_fails_in_one_line(worker):
    _, endpoint = worker
    out = subprocess.run([*CLI, "worker", "--port", endpoint.rsplit(":", 1)[1]], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: cannot listen on 127.0.0.1:")


def test_a_worker_killed_mid_generation_ends_the_answer_not_the_caller(smollm2_gguf, worker):
    from lcpp_zh.runtime.loader import open_engine
    from lcpp_zh.runtime.runner_client import RunnerClient
    from lcpp_zh.runtime.sampling import SamplingParams
    from lcpp_zh.runtime.stream import Finished, TextDelta

    proc, endpoint = worker
    from lcpp_zh.runtime.settings import EngineSettings, ModelChoice

    settings = EngineSettings(n_ctx=2048, n_threads=1, rpc=endpoint, gpu_layers="all")
    engine, plan = open_engine(ModelChoice(str(smollm2_gguf)), settings, report=lambda _m: None)
    try:
        assert isinstance(engine, RunnerClient) and plan.devices == ["RPC0"]
        banned = {engine.eos_id: -100.0, engine.eot_id: -100.0}
        stream = engine.submit(engine.tokenize(PROMPT, add_bos=True),
                               SamplingParams(temperature=0, max_tokens=1500, logit_bias=banned))
        finished = None
        for event in stream:
            if isinstance(event, TextDelta) and proc.poll() is None:
                proc.kill()
            if isinstance(event, Finished):
                finished = event
        assert finished is not None and finished.reason == "error" and finished.completion_tokens < 1500
        assert "an RPC worker may have gone away" in finished.error
        deadline = time.monotonic() + 60
        while "cannot connect" not in (engine.error or "") and time.monotonic() < deadline:
            time.sleep(0.2)
        # The restarted runner cannot reach the worker: the next request fails cleanly, naming it, and the
        # runner keeps trying with back-off.
        assert engine.state == "restarting" and f"{endpoint}: cannot connect" in engine.error
        with pytest.raises(EngineError, match=f"{endpoint}: cannot connect"):
            engine.submit(engine.tokenize(PROMPT, add_bos=True), SamplingParams(max_tokens=4))
        # The worker comes back on the same port: the runner reconnects and answers again.
        again, _ = our_worker(int(endpoint.rsplit(":", 1)[1]))
        try:
            deadline = time.monotonic() + 90
            while engine.state != "ready" and time.monotonic() < deadline:
                time.sleep(0.2)
            assert engine.state == "ready", engine.error
            answer = engine.submit(engine.tokenize(PROMPT, add_bos=True), SamplingParams(temperature=0, max_tokens=4))
            assert [e for e in answer if isinstance(e, Finished)][0].reason in ("length", "stop")
        finally:
            _stop(again)
    finally:
        engine.close()


def test_generate_reports_a_lost_worker_in_one_line(smollm2_gguf, worker):
    proc, endpoint = worker
    gen = subprocess.Popen([*CLI, "generate", str(smollm2_gguf), PROMPT, "--raw", "--temperature", "0",
                            "--max-new-tokens", "1500", "--ctx", "2048", "--threads", "1", "--rpc", endpoint,
                            "--gpu-layers", "all"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert gen.stdout.read(1)  # the answer has started streaming
        proc.kill()
        _, err = gen.communicate(timeout=120)
    finally:
        if gen.poll() is None:
            gen.kill()
    last = err.decode().strip().splitlines()[-1]
    assert gen.returncode == 1
    assert last.startswith("error: the model runner stopped (killed by SIGABRT; an RPC worker may have gone away)")
