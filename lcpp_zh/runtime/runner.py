"""The runner: a child process that hosts one served model's engine, so that nothing llama.cpp does (an
abort, a segfault, the OOM killer) can take the HTTP server down with it.

    python -m lcpp_zh.runtime.runner FD      (started by lcpp_zh.runtime.runner_client, never by hand)

It reads commands from the socket FD (lcpp_zh.runtime.runner_protocol), runs them on an in-process
Engine, and sends each engine step's events back in one message. It exits when the server closes the
socket, and with status 70 when its engine thread fails, so the server restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lcpp_zh.errors import LcppError
from lcpp_zh.runtime.runner_protocol import RunnerConfig, decode, encode, event_to_wire
from lcpp_zh.runtime.stream import Event, Finished, Stream

logger = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3
EXIT_ENGINE_FAILED = 70


class ForwardStream(Stream):
    """A stream whose events go to the server: queued in the runner's outbox, sent after each step."""

    def __init__(self, request_id: int, runner: Runner) -> None:
        super().__init__()
        self.request_id = request_id
        self._runner = runner

    def put(self, event: Event) -> None:
        if self.done:
            return
        if isinstance(event, Finished):
            self.done = True
            self._runner.streams.pop(self.request_id, None)
        self._runner.queue_event(self.request_id, event)


class Runner:
    """Serves one connection: commands in on the reader (main) thread, events out from the engine thread."""

    CALLS = ("embed", "lora_adapters", "set_lora_scales", "stats")

    def __init__(self, engine: Any, sock: socket.socket) -> None:
        self.engine = engine
        self.sock = sock
        self.streams: dict[int, ForwardStream] = {}
        self._outbox: list[list[Any]] = []
        self._outbox_lock = threading.Lock()
        self._send_lock = threading.Lock()
        # Calls (an embedding, new LoRA scales) can take a while: one worker keeps the reader free for
        # submits and cancels meanwhile.
        self._calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lcpp-zh-runner-call")
        engine.call_after_each_step(self.flush)

    def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        with self._send_lock:
            self.sock.sendall(data)

    def queue_event(self, request_id: int, event: Event) -> None:
        with self._outbox_lock:
            self._outbox.append(event_to_wire(request_id, event))

    def flush(self) -> None:
        """Send the events queued since the last flush as one message (called after each engine step)."""
        with self._outbox_lock:
            items, self._outbox = self._outbox, []
        if items:
            try:
                self.send({"op": "events", "items": items})
            except OSError:  # the server is gone; the reader sees EOF and ends the process
                pass

    def serve(self, reader: Any) -> None:
        """Run commands until the server sends close or closes the socket."""
        for line in reader:
            message = decode(line)
            op = message["op"]
            if op == "close":
                return
            if op == "submit":
                self._submit(message)
            elif op == "cancel":
                stream = self.streams.get(int(message["id"]))
                if stream is not None:
                    stream.cancel()
            elif op == "call":
                self._calls.submit(self._call, message)
            else:
                logger.warning("runner: unknown op %r", op)

    def _submit(self, message: dict[str, Any]) -> None:
        from lcpp_zh.runtime.sampling import SamplingParams

        request_id = int(message["id"])
        stream = ForwardStream(request_id, self)
        self.streams[request_id] = stream
        try:
            params = SamplingParams(**message["params"])
            self.engine.submit(message["tokens"], params, cache_key=message.get("cache_key"), stream=stream)
        except LcppError as exc:  # the server checks first; this is the last line of defence
            stream.put(Finished("error", len(message["tokens"]), 0, 0, 0.0, 0.0, error=str(exc)))
            self.flush()

    def _call(self, message: dict[str, Any]) -> None:
        call_id, method = message["id"], message.get("method")
        try:
            if method not in self.CALLS:
                raise LcppError(f"runner: unknown call {method!r}")
            result = getattr(self.engine, method)(*message.get("args", []))
            reply = {"op": "reply", "id": call_id, "result": result}
        except LcppError as exc:
            reply = {"op": "reply", "id": call_id, "error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the runner goes on
            logger.exception("runner call %s failed", method)
            reply = {"op": "reply", "id": call_id, "error": f"{type(exc).__name__}: {exc}", "kind": "Exception"}
        try:
            self.send(reply)
        except OSError:
            pass

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)


def _load_engine(config: RunnerConfig) -> tuple[Any, Any]:
    from lcpp_zh.runtime.loader import load_engine
    from lcpp_zh.runtime.offload import OffloadPlan
    from lcpp_zh.runtime.rpc import register_workers

    plan = config.plan or OffloadPlan(0, 0)
    # RPC registration is per process, in the planner's order so that the device names (RPC0, ...) match;
    # each worker is probed first, since llama.cpp aborts on one it cannot reach.
    register_workers(plan.rpc)
    return load_engine(config.model_path, config.settings, plan, logger.warning)


def _watch_engine(engine: Any) -> None:
    """A failed engine thread ends the process, so that the server restarts a working one."""
    engine.wait_stopped()
    if not engine.closed:
        logger.error("runner: the engine thread failed; exiting so that the server restarts the runner")
        sys.stderr.flush()
        os._exit(EXIT_ENGINE_FAILED)


def main(argv: list[str]) -> int:
    # The server decides when the runner ends: a Ctrl-C at the terminal must not kill it before the
    # requests in flight have finished (the server also starts it in a session of its own).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    reader = sock.makefile("rb")
    first = decode(reader.readline() or b'{"op": "close"}')
    if first["op"] != "start":
        return 0
    config = RunnerConfig.from_wire(first["config"])
    logging.basicConfig(level=config.log_level, format="%(levelname)s runner %(process)d: %(message)s")
    try:
        engine, plan = _load_engine(config)
    except LcppError as exc:
        sock.sendall(encode({"op": "load_failed", "error": str(exc)}))
        return EXIT_LOAD_FAILED
    runner = Runner(engine, sock)
    threading.Thread(target=_watch_engine, args=(engine,), name="lcpp-zh-runner-watch", daemon=True).start()
    runner.send({"op": "ready", "info": {
        "n_ctx": engine.n_ctx, "n_ctx_slot": engine.n_ctx_slot, "n_parallel": engine.n_parallel,
        "n_batch": engine.n_batch, "plan": plan.describe(), "pid": os.getpid()}})
    try:
        runner.serve(reader)
    except (OSError, ValueError) as exc:
        logger.error("runner: lost the server (%s)", exc)
    finally:
        runner.close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
