"""llama.cpp RPC workers: the pre-flight probe of an endpoint, registering workers with ggml, and serving this
machine's devices as a worker (ggml_backend_rpc_start_server).

ggml-rpc.cpp aborts the whole process when it cannot connect or the handshake fails, so every endpoint is
probed here first in Python: TCP connect with a timeout, then the protocol's own HELLO, DEVICE_COUNT and
GET_DEVICE_MEMORY exchanges (the wire format of ggml-rpc.cpp). The probe closes its connection: a worker
serves one client at a time. Everything that computes goes through llama.cpp's own transport.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass

from lcpp_zh.errors import RpcError
from lcpp_zh.runtime import ggml_api

logger = logging.getLogger(__name__)

DEFAULT_PORT = 50052
PROBE_TIMEOUT_S = 5.0
# enum rpc_cmd in ggml-rpc.cpp (RPC_CMD_HELLO is fixed at 14 for every protocol version).
CMD_GET_DEVICE_MEMORY = 11
CMD_HELLO = 14
CMD_DEVICE_COUNT = 15
CONN_CAPS_SIZE = 24  # RPC_CONN_CAPS_SIZE (transport.h): all zero = plain TCP, no RDMA upgrade


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker told the probe: its protocol version and (free, total) bytes per device."""

    endpoint: str
    version: tuple[int, int, int]
    memory: tuple[tuple[int, int], ...]


def parse_endpoints(text: str | None) -> list[str]:
    """--rpc "host:port,host:port" -> ["host:port", ...], each checked (the port is required)."""
    if not text:
        return []
    endpoints = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RpcError(f"--rpc {item!r}: expected HOST:PORT, like 127.0.0.1:{DEFAULT_PORT}")
        endpoints.append(f"{host}:{int(port)}")
    if len(set(endpoints)) != len(endpoints):
        raise RpcError(f"--rpc {text!r}: a worker is listed twice")
    if len(endpoints) > ggml_api.RPC_MAX_SERVERS:
        raise RpcError(f"--rpc: at most {ggml_api.RPC_MAX_SERVERS} workers")
    return endpoints


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _command(sock: socket.socket, cmd: int, payload: bytes, reply_size: int) -> bytes:
    """One request (| cmd u8 | size u64 | data |) and its reply (| size u64 | data |), as ggml-rpc.cpp frames
    them on little-endian hosts."""
    sock.sendall(struct.pack("<BQ", cmd, len(payload)) + payload)
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size != reply_size:
        raise ValueError(f"reply of {size} bytes, expected {reply_size}")
    return _recv_exact(sock, size)


def probe_worker(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> WorkerInfo:
    """Connect, check the protocol version and read the worker's devices; RpcError in one line otherwise."""
    host, port = _split(endpoint)
    ours = ".".join(map(str, ggml_api.RPC_PROTO_VERSION))
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise RpcError(f"RPC worker {endpoint}: cannot connect ({exc.strerror or exc}); is `lcpp-zh worker` "
                       "running there?") from None
    with sock:
        try:
            hello = _command(sock, CMD_HELLO, bytes(CONN_CAPS_SIZE), 4 + CONN_CAPS_SIZE)
        except TimeoutError:
            raise RpcError(f"RPC worker {endpoint}: no answer to the handshake in {timeout:g} s (not an RPC "
                           "worker, or one busy with another client: a worker serves one at a time)") from None
        except (OSError, ValueError):
            raise RpcError(f"RPC worker {endpoint}: not an RPC worker of protocol {ours} (the handshake failed; "
                           "an older llama.cpp worker, or another service on that port)") from None
        version = (hello[0], hello[1], hello[2])
        if version[0] != ggml_api.RPC_PROTO_VERSION[0] or version[1] > ggml_api.RPC_PROTO_VERSION[1]:
            raise RpcError(f"RPC worker {endpoint}: protocol {'.'.join(map(str, version))}, this llama.cpp speaks "
                           f"{ours}; run the same llama.cpp version on both machines")
        try:
            (count,) = struct.unpack("<I", _command(sock, CMD_DEVICE_COUNT, b"", 4))
            memory = tuple(struct.unpack("<QQ", _command(sock, CMD_GET_DEVICE_MEMORY, struct.pack("<I", i), 16))
                           for i in range(count))
        except (OSError, ValueError) as exc:
            raise RpcError(f"RPC worker {endpoint}: broke off while listing its devices ({exc})") from None
    if not memory:
        raise RpcError(f"RPC worker {endpoint}: serves no device")
    return WorkerInfo(endpoint, version, memory)


def register_workers(endpoints: list[str]) -> list[WorkerInfo]:
    """Probe each worker, then register it with ggml in this process (its devices join the device list).
    Registration opens llama.cpp's own connection, held for the life of the process."""
    if not endpoints:
        return []
    lib = ggml_api.ggml_rpc()
    infos = [probe_worker(endpoint) for endpoint in endpoints]
    for info in infos:
        reg = lib.ggml_backend_rpc_add_server(info.endpoint.encode())
        if not reg:
            raise RpcError(f"RPC worker {info.endpoint}: llama.cpp could not register it")
        ggml_api.ggml().ggml_backend_register(reg)
    return infos


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, port: int) -> str | None:
    """The one warning for a worker bound beyond this machine: the RPC protocol has no authentication."""
    if is_loopback(host):
        return None
    return (f"warning: this worker listens on {host}:{port} with no authentication: anyone who reaches that "
            "port can run computations and read the data sent to it. Prefer --host 127.0.0.1 and an SSH tunnel "
            f"from the client (`ssh -N -L {port}:127.0.0.1:{port} THIS_MACHINE`, then --rpc 127.0.0.1:{port}).")


def serve_worker(endpoint: str, devices: list[int], *, n_threads: int, cache_dir: str | None) -> None:
    """Serve `devices` (ggml handles) at `endpoint` until the process ends; blocks (call it in a thread).
    Returns only when llama.cpp gives up (it prints why: the port is taken, say)."""
    lib = ggml_api.ggml_rpc()
    handles = (ggml_api.dev_t * len(devices))(*devices)
    lib.ggml_backend_rpc_start_server(endpoint.encode(), cache_dir.encode() if cache_dir else None,
                                      ctypes.c_size_t(n_threads), ctypes.c_size_t(len(devices)), handles)


__all__ = ["DEFAULT_PORT", "RpcError", "WorkerInfo", "parse_endpoints", "probe_worker", "register_workers",
           "is_loopback", "exposure_warning", "serve_worker"]
