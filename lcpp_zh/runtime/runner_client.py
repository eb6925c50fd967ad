"""The server's side of a runner process: an engine-shaped object whose generations run in a child process
(lcpp_zh.runtime.runner), and the supervision that restarts that child when it dies.

`RunnerClient` has the Engine's interface (submit -> Stream, tokenize, embed, LoRA scales, stats). The
vocabulary is loaded here too (vocab_only: no weights), so templates, tokenizing and request checks need no
round trip. When the runner dies for any reason, every request it was serving ends at once with an error
event, the state turns to "restarting", and a new runner is started with back-off; one that fails to load
is reported once and not restarted.
"""

from __future__ import annotations

import itertools
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from typing import Any

from lcpp_zh.common.console import status
from lcpp_zh.errors import EngineError, EngineUnavailable, LcppError, ModelError
from lcpp_zh.runtime.engine import VocabularyFront
from lcpp_zh.runtime.llama_api import LlamaModel
from lcpp_zh.runtime.runner_protocol import RunnerConfig, decode, describe_exit, encode, event_from_wire
from lcpp_zh.runtime.sampling import SamplingParams
from lcpp_zh.runtime.scheduler import QueueFull
from lcpp_zh.runtime.slots import check_request
from lcpp_zh.runtime.stream import Finished, Stream

logger = logging.getLogger(__name__)

# Restart back-off: 0.5 s, 1 s, 2 s, ... up to 30 s; a runner that stayed up this long resets it.
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0
CLOSE_WAIT_S = 5.0
CALL_TIMEOUT_S = 600.0


class RemoteStream(Stream):
    """A Stream fed by the runner; cancelling it tells the runner to stop that generation."""

    def __init__(self, client: RunnerClient, request_id: int, n_prompt: int) -> None:
        super().__init__()
        self._client = client
        self.request_id = request_id
        self.n_prompt = n_prompt

    def cancel(self) -> None:
        if self.done or self.cancelled.is_set():
            return
        super().cancel()
        self._client._send_quietly({"op": "cancel", "id": self.request_id})


class _Connection:
    """One runner process and its socket."""

    def __init__(self, config: RunnerConfig) -> None:
        parent, child = socket.socketpair()
        try:
            # A session of its own: a Ctrl-C at the terminal reaches the server, which then ends the runner
            # after the requests in flight, instead of killing the runner under them.
            self.process = subprocess.Popen([sys.executable, "-m", "lcpp_zh.runtime.runner", str(child.fileno())],
                                            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        finally:
            child.close()
        self.sock = parent
        self.reader = parent.makefile("rb")
        self.started = time.monotonic()
        self.sock.sendall(encode({"op": "start", "config": config.to_wire()}))

    def wait_ready(self) -> dict[str, Any]:
        """The runner's ready info; ModelError when it fails or dies while loading."""
        line = self.reader.readline()
        if not line:
            rc = self.process.wait()
            raise ModelError(f"the model runner died while loading the model ({describe_exit(rc)}); "
                             "see the log above")
        message = decode(line)
        if message["op"] == "load_failed":
            self.process.wait()
            raise ModelError(str(message.get("error") or "the model runner could not load the model"))
        if message["op"] != "ready":
            raise ModelError(f"the model runner answered {message['op']!r} instead of ready")
        return dict(message["info"])

    def close(self, kill_after_s: float = CLOSE_WAIT_S) -> None:
        try:
            self.sock.sendall(encode({"op": "close"}))
        except OSError:
            pass
        try:
            self.process.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.reader.close()
        self.sock.close()


class RunnerClient(VocabularyFront):
    """A served model whose engine runs in a supervised child process."""

    def __init__(self, config: RunnerConfig, *, alias: str = "",
                 on_restart: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.alias = alias or config.model_path
        self.on_restart = on_restart  # the server's metrics count restarts
        self._model = LlamaModel(config.model_path, vocab_only=True)
        self._describe_model()
        self.state = "loading"
        self.error: str | None = None
        self.restarts = 0
        self._failures_in_a_row = 0
        self._closing = False
        self._streams: dict[int, RemoteStream] = {}
        self._calls: dict[int, Future] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()       # streams, calls, state
        self._send_lock = threading.Lock()  # whole messages on the socket
        self._conn: _Connection | None = None
        try:
            self._start()
        except BaseException:
            self._model.close()
            raise

    # --- the runner process ---
    def _start(self) -> None:
        conn = _Connection(self.config)
        try:
            info = conn.wait_ready()
        except BaseException:
            conn.close(kill_after_s=1.0)
            raise
        self.n_ctx = int(info["n_ctx"])
        self.n_ctx_slot = int(info["n_ctx_slot"])
        self.n_parallel = int(info["n_parallel"])
        self.plan = str(info.get("plan", ""))
        self.pid = int(info.get("pid", conn.process.pid))
        with self._lock:
            self._conn = conn
            self.state = "ready"
            self.error = None
        threading.Thread(target=self._read, args=(conn,), name=f"lcpp-zh-runner-{self.alias}", daemon=True).start()

    def _read(self, conn: _Connection) -> None:
        """Dispatch the runner's messages until it goes away, then supervise."""
        try:
            for line in conn.reader:
                message = decode(line)
                op = message["op"]
                if op == "events":
                    self._dispatch(message["items"])
                elif op == "reply":
                    self._reply(message)
        except (OSError, ValueError) as exc:
            logger.error("%s: bad message from the runner (%s)", self.alias, exc)
        self._runner_stopped(conn)

    def _dispatch(self, items: list[Any]) -> None:
        for item in items:
            request_id, event = event_from_wire(item)
            if isinstance(event, Finished):
                with self._lock:
                    stream = self._streams.pop(request_id, None)
            else:
                stream = self._streams.get(request_id)
            if stream is not None:
                stream.put(event)

    def _reply(self, message: dict[str, Any]) -> None:
        with self._lock:
            future = self._calls.pop(int(message["id"]), None)
        if future is None:
            return
        if "error" in message:
            kind = EngineError if message.get("kind") in ("EngineError", "QueueFull", "ModelError") else LcppError
            future.set_exception(kind(str(message["error"])))
        else:
            future.set_result(message.get("result"))

    def _runner_stopped(self, conn: _Connection) -> None:
        if conn.process.poll() is None and not self._closing:
            conn.process.kill()  # it sent garbage: it is not to be trusted any more
        rc = conn.process.wait()
        uptime = time.monotonic() - conn.started
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
            calls, self._calls = list(self._calls.values()), {}
            self._conn = None
            closing = self._closing
            if not closing:
                self.state = "restarting"
                self.error = f"the model runner stopped ({describe_exit(rc)})"
        lost = "; an RPC worker may have gone away" if self.config.uses_rpc else ""
        message = (f"the model runner stopped ({describe_exit(rc)}{lost}) during this request; it is being "
                   "restarted" if not closing else "the server is shutting down")
        for stream in streams:
            stream.put(Finished("error", stream.n_prompt, 0, 0, 0.0, 0.0, error=message))
        for future in calls:
            future.set_exception(EngineUnavailable(message))
        conn.reader.close()
        conn.sock.close()
        if closing:
            return
        logger.error("%s: the model runner stopped (%s); restarting it", self.alias, describe_exit(rc))
        self.restarts += 1
        if self.on_restart is not None:
            self.on_restart(self.alias)
        self._failures_in_a_row = 1 if uptime > STABLE_AFTER_S else self._failures_in_a_row + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures_in_a_row - 1))
        threading.Thread(target=self._restart, args=(delay,), name=f"lcpp-zh-restart-{self.alias}",
                         daemon=True).start()

    def _restart(self, delay: float) -> None:
        time.sleep(delay)
        if self._closing:
            return
        try:
            self._start()
            status(logger, "%s: the model runner is back (restart %d)", self.alias, self.restarts)
        except BaseException as exc:  # noqa: BLE001 - reported once through /health; no restart loop
            if self.config.uses_rpc and not isinstance(exc, KeyboardInterrupt):
                # A worker that went away may come back (a rebooted machine, a restarted `lcpp-zh worker`):
                # keep trying with the same back-off, and say which worker is missing meanwhile.
                with self._lock:
                    self.error = f"waiting for the RPC workers ({exc})"
                    self._failures_in_a_row += 1
                delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures_in_a_row - 1))
                logger.error("%s: %s; retrying in %.0f s", self.alias, self.error, delay)
                self._restart(delay)
                return
            with self._lock:
                self.state = "failed"
                self.error = f"the model runner could not be restarted: {exc}"
            logger.error("%s: %s; not retrying", self.alias, self.error)

    # --- sending ---
    def _send(self, message: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None:
            raise EngineUnavailable(self.unavailable_reason())
        data = encode(message)
        try:
            with self._send_lock:
                conn.sock.sendall(data)
        except OSError as exc:
            raise EngineUnavailable(f"the model runner is not reachable ({exc})") from exc

    def _send_quietly(self, message: dict[str, Any]) -> None:
        try:
            self._send(message)
        except EngineError:
            pass

    def unavailable_reason(self) -> str:
        if self.state == "restarting":
            return f"{self.error}; it is restarting, retry shortly"
        if self.state == "failed":
            return str(self.error)
        return f"the model runner is {self.state}"

    # --- the Engine interface ---
    @property
    def alive(self) -> bool:
        return self.state == "ready"

    def submit(self, prompt_tokens: Sequence[int], params: SamplingParams | None = None, *,
               cache_key: str | None = None) -> Stream:
        """Queue a generation on the runner; the same checks and errors as Engine.submit, made here."""
        if self.state != "ready":
            raise EngineUnavailable(self.unavailable_reason())
        tokens = [int(t) for t in prompt_tokens]
        params = params or SamplingParams()
        check_request(tokens, params, n_ctx_slot=self.n_ctx_slot, n_vocab=self.n_vocab)
        with self._lock:
            if len(self._streams) >= self.n_parallel + self.config.settings.max_queue:
                raise QueueFull(f"server busy: {len(self._streams) - self.n_parallel} requests waiting; retry later")
            request_id = next(self._ids)
            stream = RemoteStream(self, request_id, len(tokens))
            self._streams[request_id] = stream
        try:
            self._send({"op": "submit", "id": request_id, "tokens": tokens, "params": asdict(params),
                        "cache_key": cache_key})
        except EngineError:
            with self._lock:
                self._streams.pop(request_id, None)
            raise
        return stream

    def generate(self, prompt_tokens: Sequence[int], params: SamplingParams | None = None) -> tuple[str, Finished]:
        return self.submit(prompt_tokens, params).text()

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        if self.state != "ready":
            raise EngineUnavailable(self.unavailable_reason())
        future: Future = Future()
        with self._lock:
            call_id = next(self._ids)
            self._calls[call_id] = future
        try:
            self._send({"op": "call", "id": call_id, "method": method, "args": list(args)})
        except EngineError:
            with self._lock:
                self._calls.pop(call_id, None)
            raise
        return future.result(timeout)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self._call("embed", list(texts))

    def lora_adapters(self) -> list[dict[str, Any]]:
        return self._call("lora_adapters")

    def set_lora_scales(self, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._call("set_lora_scales", list(entries))

    def stats(self) -> dict[str, int]:
        """The runner's scheduler counters, plus this side's view (runner up, requests open)."""
        ours = {"runner_up": int(self.state == "ready"), "requests_open": len(self._streams)}
        if self.state != "ready":
            return ours
        try:
            theirs = self._call("stats", timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - /metrics answers with what it has
            logger.warning("%s: no stats from the runner (%s)", self.alias, exc)
            return ours
        return {**theirs, **ours}

    def interrupt_all(self, message: str) -> None:
        """End every open request now with an error event (a shutdown whose grace period is over)."""
        with self._lock:
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.put(Finished("error", stream.n_prompt, 0, 0, 0.0, 0.0, error=message))
            self._send_quietly({"op": "cancel", "id": stream.request_id})

    def close(self) -> None:
        """End the runner (requests still open end with an error) and free the vocabulary."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self.state = "closed"
            conn = self._conn
        if conn is not None:
            conn.close()
        self._model.close()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
