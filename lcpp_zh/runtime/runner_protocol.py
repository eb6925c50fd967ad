"""The wire between the server and a runner process: one JSON object per line over a socket pair.

Server to runner: start (the engine settings), submit, cancel, call (embed, LoRA scales, stats), close.
Runner to server: ready or load_failed, events (every event of one engine step in one message), reply.
JSON rather than pickle: the runner hosts llama.cpp's C code, which a hostile request could corrupt, and
a corrupted runner must not be able to make the server run code through what it sends back.
"""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import asdict, dataclass, field
from typing import Any

from lcpp_zh.runtime.offload import OffloadPlan
from lcpp_zh.runtime.settings import EngineSettings
from lcpp_zh.runtime.stream import Event, Finished, TextDelta


@dataclass(frozen=True)
class RunnerConfig:
    """Everything a runner needs to build its engine (the model is resolved and planned by the server)."""

    model_path: str
    settings: EngineSettings = field(default_factory=EngineSettings)
    plan: OffloadPlan | None = None  # None: the CPU only
    log_level: int = logging.WARNING

    @property
    def uses_rpc(self) -> bool:
        """Whether the plan puts layers on RPC workers (whose loss explains a dying runner)."""
        return bool(self.plan is not None and self.plan.rpc)

    def to_wire(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "settings": self.settings.to_wire(),
                "plan": asdict(self.plan) if self.plan is not None else None, "log_level": self.log_level}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RunnerConfig:
        plan = data.get("plan")
        return cls(model_path=str(data["model_path"]), settings=EngineSettings.from_wire(data.get("settings") or {}),
                   plan=OffloadPlan(**plan) if plan else None, log_level=int(data.get("log_level", logging.WARNING)))


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict) or "op" not in message:
        raise ValueError("runner protocol: a message must be an object with an op")
    return message


def event_to_wire(request_id: int, event: Event) -> list[Any]:
    if isinstance(event, TextDelta):
        return ["d", request_id, event.text, event.n_tokens]
    fields = asdict(event)
    fields["tokens"] = list(event.tokens)
    return ["f", request_id, fields]


def event_from_wire(item: list[Any]) -> tuple[int, Event]:
    kind, request_id = item[0], int(item[1])
    if kind == "d":
        return request_id, TextDelta(str(item[2]), int(item[3]))
    fields = dict(item[2])
    fields["tokens"] = tuple(int(t) for t in fields.get("tokens", ()))
    return request_id, Finished(**fields)


def describe_exit(returncode: int | None) -> str:
    """`killed by SIGSEGV` or `exit code 3`, for the error every waiting client receives."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"
