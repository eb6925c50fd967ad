"""`lcpp-zh worker`: serve this machine's devices to other machines over llama.cpp's RPC protocol
(ggml_backend_rpc_start_server), so llama.cpp's `llama-server --rpc` and `lcpp-zh ... --rpc` can use them.

Only parses options; lcpp_zh.runtime.worker does the work. The protocol has no authentication: the worker
binds 127.0.0.1 unless --host says otherwise, and then warns.
"""

from __future__ import annotations

import click

from lcpp_zh.runtime.rpc import DEFAULT_PORT
from lcpp_zh.runtime.worker import DEFAULT_HOST


@click.command("worker")
@click.option("--host", default=DEFAULT_HOST, envvar="LCPP_ZH_WORKER_HOST",
              help="Address to bind. Anything but loopback exposes an unauthenticated service: prefer an SSH tunnel.")
@click.option("--port", default=DEFAULT_PORT, type=click.IntRange(1, 65535), help="TCP port (llama.cpp's default).")
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
    from lcpp_zh.runtime.worker import run_worker

    run_worker(host, port, device_spec, threads, use_cache, report=lambda line: click.echo(line, err=True))


COMMANDS: list[click.Command] = [worker]
