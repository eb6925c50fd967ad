"""`lcpp-zh worker`: serve this machine's devices to other machines over llama.cpp's RPC protocol
(ggml_backend_rpc_start_server), so llama.cpp's `llama-server --rpc` and `lcpp-zh ... --rpc` can use them.

The protocol has no authentication: the worker binds 127.0.0.1 unless --host says otherwise, and then warns.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading

import click

from lcpp_zh.errors import LcppError


def _check_port_free(host: str, port: int) -> None:
    """A one-line error for a taken port (llama.cpp would only print `Failed to create server socket`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as llama.cpp's server socket
        try:
            sock.bind((host, port))
        except OSError as exc:
            hint = "; pick another with --port" if exc.errno == errno.EADDRINUSE else ""
            raise LcppError(f"cannot listen on {host}:{port} ({exc.strerror or exc}){hint}") from None


@click.command("worker")
@click.option("--host", default="127.0.0.1", envvar="LCPP_ZH_WORKER_HOST",
              help="Address to bind. Anything but loopback exposes an unauthenticated service: prefer an SSH tunnel.")
@click.option("--port", default=50052, type=click.IntRange(1, 65535), help="TCP port (llama.cpp's default).")
@click.option("--device", "device_spec", default=None, metavar="DEV[,DEV]",
              help="Devices to serve, by index or name (`lcpp-zh devices`) [default: every GPU, else the CPU].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads [default: physical cores].")
@click.option("--cache", "use_cache", is_flag=True,
              help="Keep received tensors in a local cache (under the lcpp-zh cache), so a model loads faster the "
                   "next time.")
def worker(host: str, port: int, device_spec: str | None, threads: int | None, use_cache: bool) -> None:
    """Serve this machine's devices as a llama.cpp RPC worker until Ctrl-C.

    \b
    Examples:
      lcpp-zh worker                        # 127.0.0.1:50052
      lcpp-zh worker --port 50053 --device CPU --threads 4
      ssh -N -L 50052:127.0.0.1:50052 gpu-box   # then, here: lcpp-zh chat model.gguf --rpc 127.0.0.1:50052
    """
    from lcpp_zh.resolve import cache_dir
    from lcpp_zh.runtime import ggml_api
    from lcpp_zh.runtime.devices import list_devices, select_devices
    from lcpp_zh.runtime.engine import physical_cores
    from lcpp_zh.runtime.rpc import exposure_warning, serve_worker

    ggml_api.ggml_rpc()
    found = [d for d in list_devices() if not d.is_rpc]
    chosen = select_devices(found, device_spec) if device_spec else \
        [d for d in found if d.offloads] or [d for d in found if d.type == "cpu"]
    if not chosen:
        raise LcppError("no device to serve")
    _check_port_free(host, port)
    warning = exposure_warning(host, port)
    if warning:
        click.echo(warning, err=True)
    folder = None
    if use_cache:
        folder = cache_dir() / "rpc-cache"
        folder.mkdir(parents=True, exist_ok=True)
    endpoint = f"{host}:{port}"  # llama.cpp splits at the first colon: IPv4 or a host name
    names = ", ".join(d.label() for d in chosen)
    click.echo(f"worker: serving {names} on {endpoint} (RPC protocol "
               f"{'.'.join(map(str, ggml_api.RPC_PROTO_VERSION))}); Ctrl-C to stop", err=True)
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


COMMANDS: list[click.Command] = [worker]
