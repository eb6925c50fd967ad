"""`serve --cors-origins` on a real server: a preflight from an allowed origin gets the allow headers without
the API key, one from another origin gets none, the request itself still needs the key; a server without the
option allows no origin. No model is loaded: the servers have only a --models-dir.
"""

from __future__ import annotations

import subprocess

import httpx
import pytest
from conftest import lcpp_zh_command
from server_harness import start_server

pytestmark = pytest.mark.slow

ALLOWED = "http://localhost:3210"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}


@pytest.fixture(scope="module")
def models_dir(smollm2_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cors-models")
    (folder / "smol.gguf").symlink_to(smollm2_gguf)
    return folder


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    srv = start_server(["--models-dir", str(models_dir), "--cors-origins", f"{ALLOWED},https://chat.example.org",
                        "--threads", "1", "--ctx", "256", "--parallel", "1"],
                       tmp_path_factory.mktemp("serve-cors"), api_key="secret")
    yield srv
    srv.stop()


def preflight(server, origin: str, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.options(f"{server.url}{path}", headers={"Origin": origin, **PREFLIGHT}, timeout=10)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/generate", "/api/chat"])
def test_a_preflight_from_an_allowed_origin_needs_no_key(server, path):
    answer = preflight(server, ALLOWED, path)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in answer.headers


@pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost:3211", "null", f"{ALLOWED}.evil.example"])
def test_a_preflight_from_another_origin_gets_no_allow_headers(server, origin):
    answer = preflight(server, origin)
    assert answer.status_code >= 400
    assert "access-control-allow-origin" not in answer.headers


def test_the_request_itself_still_needs_the_key(server):
    headers = {"Origin": ALLOWED}
    refused = httpx.get(f"{server.v1}/models", headers=headers, timeout=10)
    assert refused.status_code == 401
    # The browser may read the refusal (so the page can say the key is wrong).
    assert refused.headers["access-control-allow-origin"] == ALLOWED
    allowed = httpx.get(f"{server.v1}/models", headers={**headers, **server.headers()}, timeout=10)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED
    other = httpx.get(f"{server.v1}/models", headers={"Origin": "http://evil.example", **server.headers()},
                      timeout=10)
    assert "access-control-allow-origin" not in other.headers


def test_without_the_option_no_origin_is_allowed(models_dir, tmp_path):
    srv = start_server(["--models-dir", str(models_dir)], tmp_path)
    try:
        answer = preflight(srv, ALLOWED)
        assert "access-control-allow-origin" not in answer.headers
        assert "access-control-allow-origin" not in httpx.get(f"{srv.v1}/models", headers={"Origin": ALLOWED}).headers
    finally:
        srv.stop()


def test_star_allows_any_origin(models_dir, tmp_path):
    srv = start_server(["--models-dir", str(models_dir), "--cors-origins", "*"], tmp_path)
    try:
        assert preflight(srv, "http://anything.example").headers["access-control-allow-origin"] == "*"
    finally:
        srv.stop()


@pytest.mark.parametrize("bad", ["ftp://x.example", "localhost:3210", "http://x.example/path", "http://"])
def test_a_bad_origin_is_a_one_line_error(bad):
    done = subprocess.run([*lcpp_zh_command(), "serve", "x.gguf", "--cors-origins", bad], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "--cors-origins" in done.stderr
