"""Loading the models a server serves: MODEL arguments to aliases, and one model to a ServedModel whose engine
runs in a supervised runner process (lcpp_zh.runtime.runner_client).

Resolving, checking and planning are lcpp_zh.runtime.loader's, shared with chat; the plan's out-of-memory
fallback happens in the runner. Nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lcpp_zh.common.console import status
from lcpp_zh.errors import LcppError
from lcpp_zh.runtime.loader import check_settings, prepare_model, start_runner
from lcpp_zh.runtime.settings import EngineSettings, ModelChoice
from lcpp_zh.server.registry import ModelSource, ServedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    alias: str
    name: str


def parse_model_specs(names: Sequence[str]) -> list[ModelSpec]:
    """`ALIAS=MODEL` or `MODEL` (alias: the file name without .gguf, or the repo id's last part)."""
    specs = []
    for name in names:
        alias, sep, target = name.partition("=")
        if not sep or not alias or "/" in alias or Path(name).exists():
            target, alias = name, _default_alias(name)
        specs.append(ModelSpec(alias=alias.strip(), name=target.strip()))
    if not specs:
        raise LcppError("no model given: `lcpp-zh serve MODEL.gguf` (or --model_path PATH)")
    seen: set[str] = set()
    for spec in specs:
        if spec.alias in seen:
            raise LcppError(f"two models share the alias {spec.alias!r}: name them ALIAS=MODEL")
        seen.add(spec.alias)
    return specs


def _default_alias(name: str) -> str:
    base = Path(name.rstrip("/")).name
    return base[:-5] if base.lower().endswith(".gguf") else base


def load_served_model(alias: str, choice: ModelChoice, settings: EngineSettings, template: Any = None,
                      on_restart: Callable[[str], None] | None = None) -> ServedModel:
    """Resolve one model (converting a checkpoint on first use), plan its offload and start its runner.
    `template`: a template name, a ChatTemplate (--template-file) or None (the model's own)."""
    path, plan = prepare_model(choice, settings)
    status(logger, "%s: %s", alias, plan.describe())
    engine = start_runner(path, settings, plan, alias=alias, on_restart=on_restart)
    return ServedModel(alias=alias, engine=engine, path=Path(path), template=template)


def model_source(specs: Sequence[ModelSpec], choice: ModelChoice, settings: EngineSettings,
                 template: Any = None) -> ModelSource:
    """What the registry can load: `specs` (preloaded at start) as `choice` with their own names, and any
    other GGUF it finds (the cache, --models-dir) with the same settings but its own chat template and
    without the --lora adapters, which belong to the named model. The settings are checked now, before the
    server binds its port."""
    check_settings(settings)
    plain = settings.replace(loras=())

    def load(alias: str, name: str, named: bool) -> ServedModel:
        if named:
            return load_served_model(alias, replace(choice, name=name), settings, template)
        return load_served_model(alias, replace(choice, name=name, template=None), plain, None)

    return ModelSource(load=load, named=tuple((spec.alias, spec.name) for spec in specs),
                       named_template=getattr(template, "name", template), max_waiting=settings.max_queue)
