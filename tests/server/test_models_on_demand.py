"""Models on demand in a real `lcpp-zh serve`: a --models-dir of two GGUFs (SmolLM2 and the tiny Chinese
Llama), loaded on first request, unloaded after their keep-alive, evicted by --max-loaded; names are looked up,
never opened as paths; `lcpp-zh ps` against the running server.

Whether a model is loaded is checked twice: by /v1/models and by the runner processes under the server.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time

import httpx
import openai
import psutil
import pytest
from conftest import lcpp_zh_command
from server_harness import start_server

pytestmark = pytest.mark.slow

ENGINE = ["--threads", "1", "--ctx", "256", "--parallel", "1", "--no-embeddings"]


def runners(server) -> int:
    return len(psutil.Process(server.process.pid).children(recursive=True))


def statuses(server) -> dict[str, str]:
    body = httpx.get(f"{server.v1}/models", timeout=30).json()
    return {m["id"]: m["status"] for m in body["data"]}


def wait_status(server, alias: str, status: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if statuses(server).get(alias) == status:
            return
        time.sleep(0.2)
    raise AssertionError(f"{alias} not {status} after {timeout} s: {statuses(server)}\n{server.log()}")


def ask(server, model: str, timeout: float = 180) -> httpx.Response:
    return httpx.post(f"{server.v1}/chat/completions", timeout=timeout,
                      json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def models_dir(smollm2_gguf, tiny_zh_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    (folder / "smol.gguf").symlink_to(smollm2_gguf)
    (folder / "tiny.gguf").symlink_to(tiny_zh_gguf)
    (folder / "notes.txt").write_text("not a model")
    return folder


@pytest.fixture(scope="module")
def lru_server(models_dir, tmp_path_factory):
    """No model named: everything loads on demand; one at a time, kept until evicted."""
    srv = start_server(["--models-dir", str(models_dir), "--max-loaded", "1", "--keep-alive", "-1", *ENGINE],
                       tmp_path_factory.mktemp("serve-lru"))
    yield srv
    srv.stop()


def test_nothing_is_loaded_at_start_and_both_are_listed(lru_server, models_dir):
    assert httpx.get(f"{lru_server.url}/health", timeout=10).status_code == 200
    listed = httpx.get(f"{lru_server.v1}/models", timeout=30).json()["data"]
    by_id = {m["id"]: m for m in listed}
    assert set(by_id) == {"smol", "tiny"}
    assert {m["status"] for m in listed} == {"available"}
    assert by_id["smol"]["size_bytes"] == (models_dir / "smol.gguf").stat().st_size
    assert runners(lru_server) == 0


def test_first_request_loads_and_the_openai_client_sees_it(lru_server):
    client = openai.OpenAI(base_url=lru_server.v1, api_key="unused", max_retries=0, timeout=180)
    answer = client.chat.completions.create(model="smol", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "smol" and answer.choices[0].message.content
    assert statuses(lru_server)["smol"] == "loaded"
    assert runners(lru_server) == 1
    loaded = next(m for m in client.models.list().data if m.id == "smol")
    assert loaded.model_extra["expires_at"] is None  # --keep-alive -1


def test_max_loaded_one_evicts_the_least_recently_used(lru_server):
    assert ask(lru_server, "smol").status_code == 200
    assert ask(lru_server, "tiny").status_code == 200
    assert statuses(lru_server) == {"smol": "available", "tiny": "loaded"}
    assert runners(lru_server) == 1


def test_concurrent_first_requests_share_one_load(lru_server):
    assert ask(lru_server, "tiny").status_code == 200  # tiny loaded, smol not
    loads_before = lru_server.log().count("loading smol")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: ask(lru_server, "smol"), range(4)))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert lru_server.log().count("loading smol") == loads_before + 1


def test_alternating_models_with_one_slot_neither_crash_nor_hang(lru_server):
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: ask(lru_server, ("smol", "tiny")[i % 2]), range(6)))
    assert {a.status_code for a in answers} <= {200, 503}, [a.text for a in answers]
    assert sum(a.status_code == 200 for a in answers) >= 4
    assert httpx.get(f"{lru_server.url}/health", timeout=10).status_code == 200
    assert runners(lru_server) <= 1


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "smol.gguf/..", "SMOL", "tiny.gguf/../smol"])
def test_names_are_never_paths(lru_server, name):
    answer = ask(lru_server, name)
    assert answer.status_code == 404, answer.text
    assert answer.json()["error"]["code"] == "model_not_found"


def test_a_real_gguf_outside_the_served_set_is_not_loaded(lru_server, smollm2_gguf):
    before = lru_server.log().count("loading ")
    answer = ask(lru_server, str(smollm2_gguf))
    assert answer.status_code == 404
    assert lru_server.log().count("loading ") == before


def test_lcpp_zh_ps_shows_the_loaded_model(lru_server):
    assert ask(lru_server, "tiny").status_code == 200
    run = lambda *a: subprocess.run([*lcpp_zh_command(), "ps", "--port", str(lru_server.port), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=60)
    table = run()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "SIZE", "CONTEXT", "UNTIL"]
    assert [line.split()[:2] for line in lines[1:]] == [["tiny", "loaded"]]
    assert lines[1].split()[-1] == "forever"
    everything = json.loads(run("--all", "--json").stdout)
    assert {m["id"]: m["status"] for m in everything} == {"smol": "available", "tiny": "loaded"}


@pytest.fixture(scope="module")
def expiring_server(models_dir, smollm2_gguf, tmp_path_factory):
    """`serve smol=... --models-dir` with a short keep-alive and a broken GGUF beside the good ones."""
    folder = tmp_path_factory.mktemp("models-expiring")
    (folder / "tiny.gguf").symlink_to(models_dir / "tiny.gguf")
    (folder / "broken.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    srv = start_server([f"named={smollm2_gguf}", "--models-dir", str(folder), "--keep-alive", "3s", *ENGINE],
                       tmp_path_factory.mktemp("serve-expiring"))
    yield srv
    srv.stop()


def test_a_named_model_is_preloaded_then_expires_and_comes_back(expiring_server):
    # /health said ok before the harness returned: the named model was loaded at start.
    assert set(statuses(expiring_server)) == {"named", "tiny", "broken"}
    wait_status(expiring_server, "named", "available", timeout=30)
    assert runners(expiring_server) == 0
    assert httpx.get(f"{expiring_server.url}/health", timeout=10).json()["status"] == "ok"
    assert ask(expiring_server, "").status_code == 200  # no model named: the command line's first
    assert statuses(expiring_server)["named"] == "loaded"


def test_keep_alive_unloads_an_on_demand_model(expiring_server):
    started = time.monotonic()
    assert ask(expiring_server, "tiny").status_code == 200
    entry = next(m for m in httpx.get(f"{expiring_server.v1}/models").json()["data"] if m["id"] == "tiny")
    assert entry["status"] == "loaded" and 0 < entry["expires_at"] - time.time() <= 3.5
    wait_status(expiring_server, "tiny", "available", timeout=30)
    assert time.monotonic() - started >= 2.5


def test_a_failed_load_is_an_error_naming_the_cause_and_is_retried(expiring_server):
    for _ in range(2):
        answer = ask(expiring_server, "broken")
        assert answer.status_code == 500, answer.text
        error = answer.json()["error"]
        assert error["code"] == "model_load_failed" and "broken" in error["message"]
        assert statuses(expiring_server)["broken"] == "available"
    assert expiring_server.log().count("loading broken failed") == 2
    assert ask(expiring_server, "tiny").status_code == 200
