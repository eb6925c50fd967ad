"""Start and stop real `lcpp-zh serve` processes on 127.0.0.1 for the server tests.

A server is a subprocess of the installed CLI on a free port; `start_server` waits until /health says ok (or
the process dies, whose log is then shown) and `stop` interrupts it and waits, so no test leaks a server.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
from conftest import lcpp_zh_command

from lcpp_zh.common.net import free_port, wait_http_ready

START_TIMEOUT_S = 180


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log_path: Path
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, by name and exact label text (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", headers=self.headers(), timeout=10).text
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(args: list[str], workdir: Path, *, api_key: str | None = None, env: dict[str, str] | None = None,
                 wait: bool = True) -> Server:
    """`lcpp-zh serve ARGS --port FREE` with its log in workdir; waits for /health 200 when `wait`."""
    port = free_port()
    log_path = workdir / f"serve-{port}.log"
    # OpenMP (llama.cpp's CPU threads) spins at each of the hundreds of barriers of a decode; on a test machine
    # whose cores other processes also use, a spinning thread waits out the scheduler's time slice for its
    # descheduled partner at every barrier, and one token takes seconds instead of milliseconds (a stream
    # looks hung). Waiting passively keeps the tests' timing independent of the machine's load.
    full_env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "LCPP_ZH_CACHE": str(workdir / "cache"), **(env or {})}
    full_env.pop("LCPP_ZH_API_KEY", None)
    if api_key:
        full_env["LCPP_ZH_API_KEY"] = api_key
    with open(log_path, "wb") as log:
        # A process group of its own, as a server started from a terminal has: a test can send it the
        # terminal's Ctrl-C (os.killpg) without hitting pytest.
        process = subprocess.Popen([*lcpp_zh_command(), "serve", *args, "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
    server = Server(process, port, log_path, api_key)
    if wait:
        wait_ready(server)
    return server


def wait_ready(server: Server, timeout: float = START_TIMEOUT_S) -> None:
    """Until /health answers 200; the server's log goes with the error when it exits or never gets there."""
    try:
        wait_http_ready(f"{server.url}/health", timeout, process=server.process)
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        raise RuntimeError(f"{exc}:\n{server.log()}") from None
