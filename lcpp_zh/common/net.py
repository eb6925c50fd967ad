"""Loopback helpers for starting servers and workers: a free port, and waiting until something answers.

Used by the tests and the benchmarks (servers, RPC workers, llama.cpp's own tools). Standard library only
(urllib, not httpx, which is a test dependency), so any front can use them; nothing here listens.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the system's pick; another process may still take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], T], *, timeout: float, process: subprocess.Popen | None = None,
             interval: float = 0.2, what: str = "it") -> T:
    """Call `check` until it returns something true, and return that. An OSError from `check` (a refused
    connection) counts as not yet. RuntimeError when `process` exits first, TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode} before it was ready")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not ready after {timeout:g} s")
        time.sleep(interval)


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether GET `url` answers 200 (a refused connection, an error status or a timeout: False)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    except OSError:  # URLError and HTTPError (a 503 while loading) are OSErrors; so are socket timeouts
        return False


def wait_http_ready(url: str, timeout: float, *, process: subprocess.Popen | None = None,
                    interval: float = 0.2) -> float:
    """Wait until GET `url` (a /health) answers 200; returns the seconds waited. RuntimeError when
    `process` (the server) exits first, TimeoutError after `timeout` s."""
    start = time.monotonic()
    wait_for(lambda: http_ok(url), timeout=timeout, process=process, interval=interval, what=url)
    return time.monotonic() - start


def wait_tcp_ready(host: str, port: int, timeout: float, *, process: subprocess.Popen | None = None,
                   interval: float = 0.2) -> float:
    """Wait until `host:port` accepts a TCP connection; returns the seconds waited (as wait_http_ready)."""
    start = time.monotonic()

    def connects() -> bool:
        socket.create_connection((host, port), timeout=1).close()
        return True

    wait_for(connects, timeout=timeout, process=process, interval=interval, what=f"{host}:{port}")
    return time.monotonic() - start
