"""Fuzz a real `lcpp-zh serve` with schemathesis: generated bodies for every operation of its OpenAPI schema
(read behind the API key, as a client would), with the check that no answer is a server error (5xx).
The server must answer every case and be alive and healthy at the end.

Small context and few examples per operation keep it to a couple of minutes on two cores.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from server_harness import start_server

pytestmark = pytest.mark.slow

KEY = "fuzz-key"
EXAMPLES_PER_OPERATION = 25


def schemathesis_command() -> list[str]:
    exe = shutil.which("st", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed (it comes with the test extra)")
    return [exe]


def test_no_generated_request_is_a_server_error(smollm2_gguf, tmp_path):
    srv = start_server([str(smollm2_gguf), "--parallel", "2", "--ctx", "512", "--threads", "2", "--no-embeddings"],
                       tmp_path, api_key=KEY)
    try:
        assert httpx.get(f"{srv.url}/openapi.json", timeout=10).status_code == 401
        schema = httpx.get(f"{srv.url}/openapi.json", headers=srv.headers(), timeout=10).json()
        operations = sum(len(methods) for methods in schema["paths"].values())
        assert operations >= 10, sorted(schema["paths"])
        # Ollama's API is fuzzed with the rest (lcpp_zh.server.ollama_api).
        ollama = {"/api/version", "/api/tags", "/api/show", "/api/ps", "/api/chat", "/api/generate", "/api/embed",
                  "/api/embeddings"}
        assert ollama <= set(schema["paths"]), sorted(ollama - set(schema["paths"]))
        report = tmp_path / "report.json"
        result = subprocess.run(
            [*schemathesis_command(), "run", f"{srv.url}/openapi.json", "--header", f"Authorization: Bearer {KEY}",
             "--checks", "not_a_server_error", "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", "20261202",
             "--request-timeout", "120", "--continue-on-failure", "--no-color",
             "--report", "ndjson", "--report-ndjson-path", str(report)],
            capture_output=True, text=True, timeout=1500)
        output = result.stdout + result.stderr
        print(output[-6000:])
        assert result.returncode == 0, f"schemathesis found server errors:\n{output[-6000:]}"
        cases = _count_cases(report)
        print(f"schemathesis: {operations} operations, {cases} generated requests, 0 server errors")
        assert cases >= operations * 5
        assert srv.process.poll() is None, "the server died under fuzzing"
        assert httpx.get(f"{srv.url}/health", timeout=10).json()["status"] == "ok"
        assert "restarting it" not in srv.log(), "a generated request took the runner down"
    finally:
        srv.stop()


def _count_cases(report: Path) -> int:
    """Requests sent, from schemathesis' event log (one ScenarioFinished event per case)."""
    count = 0
    for line in report.read_text().splitlines():
        event = json.loads(line)
        if "ScenarioFinished" in event:
            count += len(event["ScenarioFinished"].get("recorder", {}).get("interactions", {})) or 1
    return count
