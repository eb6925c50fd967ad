"""The models a server serves, each under an alias, and their loading state.

Models load in a background thread after the server starts listening, so /health can answer 503 while they
load. A request for an alias that is not served is a 404, never a fall-back to another model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpp_zh.server.httperrors import ApiError

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One engine under one alias; `template` is a template name or object (None: the model's own / auto)."""

    alias: str
    engine: Any
    path: Path | None = None
    template: Any = None
    created: int = field(default_factory=lambda: int(time.time()))

    def runner_state(self) -> dict[str, Any]:
        """For /health and /v1/models: state (ready, restarting, failed), the last error, restarts so far."""
        engine = self.engine
        state: dict[str, Any] = {"state": str(getattr(engine, "state", "ready" if getattr(engine, "alive", True)
                                                      else "failed"))}
        if getattr(engine, "error", None):
            state["error"] = str(engine.error)
        if isinstance(getattr(engine, "restarts", None), int):
            state["restarts"] = engine.restarts
        return state

    @property
    def template_name(self) -> str | None:
        """The template's name for clients (a --template-file template is an object with a name)."""
        return getattr(self.template, "name", self.template)


class ModelRegistry:
    """Holds the served models; loading runs once, in a thread, through `loader`."""

    def __init__(self, loader: Callable[[], list[ServedModel]],
                 on_failure: Callable[[BaseException], None] | None = None,
                 on_restart: Callable[[str], None] | None = None) -> None:
        self._loader = loader
        self._on_failure = on_failure
        self._on_restart = on_restart
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self.state = "loading"
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def start_loading(self) -> None:
        self._thread = threading.Thread(target=self._load, name="lcpp-zh-model-loader", daemon=True)
        self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state == "ready"

    def _load(self) -> None:
        try:
            models = self._loader()
            if not models:
                raise ValueError("no model to serve")
            with self._lock:
                for model in models:
                    if model.alias in self._models:
                        raise ValueError(f"alias {model.alias!r} is used twice; give each model its own alias")
                    self._models[model.alias] = model
                    if hasattr(model.engine, "on_restart"):  # a runner process: count its restarts
                        model.engine.on_restart = self._on_restart
            self.state = "ready"
            logger.info("serving %s", ", ".join(self._models))
        except BaseException as exc:  # noqa: BLE001 - reported through /health and the CLI
            self.state = "failed"
            self.error = str(exc) or type(exc).__name__
            logger.error("loading models failed: %s", self.error)
            if self._on_failure is not None:
                self._on_failure(exc)

    @property
    def aliases(self) -> list[str]:
        return list(self._models)

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def get(self, alias: str | None) -> ServedModel:
        """The model for `alias` (None or "": the first model); 503 while loading, 404 when unknown."""
        if self.state != "ready":
            if self.state == "failed":
                raise ApiError(503, f"model loading failed: {self.error}", code="model_load_failed")
            raise ApiError(503, "models are still loading; retry shortly", code="loading",
                           headers={"Retry-After": "2"})
        if not alias:
            return next(iter(self._models.values()))
        model = self._models.get(alias)
        if model is None:
            raise ApiError(404, f"model {alias!r} is not served here; served: {', '.join(self._models)}",
                           param="model", code="model_not_found")
        return model

    def interrupt_all(self, message: str) -> None:
        """End every request in flight with an error event (engines that run in-process have none to end)."""
        for model in list(self._models.values()):
            interrupt = getattr(model.engine, "interrupt_all", None)
            if interrupt is not None:
                interrupt(message)

    def close(self) -> None:
        for model in self._models.values():
            try:
                model.engine.close()
            except Exception as exc:  # noqa: BLE001 - closing the others matters more
                logger.warning("closing %s: %s", model.alias, exc)
        self._models.clear()
