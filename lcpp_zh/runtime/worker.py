"""Running this process as a llama.cpp RPC worker: check the port, choose the devices, then hand the process
to ggml_backend_rpc_start_server (lcpp_zh.runtime.rpc.serve_worker) until a signal ends it.

`run_worker` takes the process over (stdout joins stderr, SIGTERM exits at once) and never returns normally:
only a command or a script meant to be a worker calls it. Messages for the user go through `report`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import NoReturn

from lcpp_zh.errors import LcppError
from lcpp_zh.runtime import ggml_api
from lcpp_zh.runtime.devices import Device
from lcpp_zh.runtime.rpc import DEFAULT_PORT

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # the protocol has no authentication: loopback unless asked otherwise


def check_port_free(host: str, port: int) -> None:
    """A one-line error for a taken port (llama.cpp would only print `Failed to create server socket`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama.cpp's server socket
        try:
            sock.bind((host, port))
        except OSError as exc:
            hint = "; pick another with --port" if exc.errno == errno.EADDRINUSE else ""
            raise LcppError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None


def choose_worker_devices(spec: str | None) -> list[Device]:
    """The local devices named by `spec` (indexes or names), else every GPU, else the CPU."""
    from lcpp_zh.runtime.devices import list_devices, select_devices

    found = [d for d in list_devices() if not d.is_rpc]
    chosen = select_devices(found, spec) if spec else \
        [d for d in found if d.offloads] or [d for d in found if d.type == "cpu"]
    if not chosen:
        raise LcppError("no device to serve")
    return chosen


def run_worker(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, device: str | None = None,
               threads: int | None = None, cache: bool = False, *,
               report: Callable[[str], None] = logger.warning) -> NoReturn:
    """Serve `device` (default: every GPU, else the CPU) at host:port with `threads` CPU threads (default:
    physical cores); `cache` keeps received tensors under the lcpp-zh cache. Blocks until SIGTERM or Ctrl-C
    ends the process; LcppError when the port is taken or llama.cpp's server stops."""
    from lcpp_zh.common.system import physical_cores
    from lcpp_zh.runtime.rpc import exposure_warning, serve_worker

    ggml_api.ggml_rpc()
    chosen = choose_worker_devices(device)
    check_port_free(host, port)
    warning = exposure_warning(host, port)
    if warning:
        report(warning)
    folder = None
    if cache:
        from lcpp_zh.resolve import cache_dir

        folder = cache_dir() / "rpc-cache"
        folder.mkdir(parents=True, exist_ok=True)
    endpoint = f"{host}:{port}"  # llama.cpp splits at the first colon: IPv4 or a host name
    names = ", ".join(d.label() for d in chosen)
    report(f"worker: serving {names} on {endpoint} (RPC protocol "
           f"{'.'.join(map(str, ggml_api.RPC_PROTO_VERSION))}); Ctrl-C to stop")
    sys.stdout.flush()
    os.dup2(2, 1)  # llama.cpp's server prints its progress with printf: stderr is where progress goes
    thread = threading.Thread(target=serve_worker, args=(endpoint, [d.handle for d in chosen]),
                              kwargs={"n_threads": threads or physical_cores(),
                                      "cache_dir": str(folder) if folder else None},
                              name="lcpp-zh-rpc-worker", daemon=True)
    # The server blocks in C; the main thread waits so that Ctrl-C and SIGTERM end the process at once.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    raise LcppError(f"the RPC server on {endpoint} stopped (see llama.cpp's message above)")


__all__ = ["DEFAULT_HOST", "check_port_free", "choose_worker_devices", "run_worker"]
