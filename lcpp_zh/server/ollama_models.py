"""Ollama's model routes: /api/version, /api/tags, /api/show, /api/ps, and the lease helper the others share.

Model facts come from the GGUF's header (gguf-py, memory-mapped, tensors never read), cached by path and
mtime. Ollama's `digest` is the hash of its manifest; ours hashes path, size and mtime, which changes whenever
the file does, without reading gigabytes. Models are found and loaded by lcpp_zh.server.registry.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.routing import APIRoute

from lcpp_zh import __version__
from lcpp_zh.server.httperrors import ApiError
from lcpp_zh.server.ollama_schemas import OllamaShowRequest

logger = logging.getLogger(__name__)


class OllamaRoute(APIRoute):
    """Reads every body as JSON, whatever its content type (or none): Ollama does, and its documentation's
    examples (`curl URL -d '{...}'`) send JSON as a form, which FastAPI would not parse."""

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()

        async def as_json(request: Request) -> Any:
            kind = request.headers.get("content-type", "")
            if not kind.split(";")[0].strip().lower().endswith("json"):
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                scope = {**request.scope, "headers": [*headers, (b"content-type", b"application/json")]}
                request = Request(scope, request.receive)
            return await handler(request)

        return as_json


router = APIRouter(route_class=OllamaRoute)

# Ollama's own API version that our routes follow (its clients check for a version, not a vendor).
OLLAMA_API_VERSION = "0.12.0"
# What Ollama shows for a model kept loaded forever: now plus Go's largest duration (about 292 years).
_FOREVER = datetime.timedelta(microseconds=(2**63 - 1) // 1000)
_OFFLOADED = re.compile(r"^(\d+)/(\d+) layers offloaded")


def rfc3339(epoch_s: float) -> str:
    """Ollama's timestamps: RFC 3339 in UTC with a Z."""
    stamp = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc)
    return stamp.isoformat().replace("+00:00", "Z")


def display_name(alias: str) -> str:
    """Ollama names carry a tag; an alias without one is NAME:latest (the registry finds both)."""
    return alias if ":" in alias else f"{alias}:latest"


async def hold(request: Request, name: str, keep_alive: Any) -> tuple[Any, float]:
    """(model, seconds it took): the named model, loaded first if needed and held until the response has been
    sent (lcpp_zh.server.leases). `keep_alive` is Ollama's field as sent; None: the server's --keep-alive."""
    from lcpp_zh.server.keep_alive import parse_keep_alive
    from lcpp_zh.server.leases import DEFAULT, hold_model

    if not name:
        raise ApiError(400, "model is required", param="model")
    keep = DEFAULT if keep_alive is None else parse_keep_alive(keep_alive)
    started = time.perf_counter()
    model = await hold_model(request, name, keep)
    return model, time.perf_counter() - started


@functools.lru_cache(maxsize=64)
def _gguf_facts(path: str, _mtime_ns: int, _size: int) -> dict[str, Any]:
    """The header's key-value pairs (arrays kept apart) and the parameter count; keyed by mtime and size so a
    replaced file is read again."""
    import gguf

    from lcpp_zh.convert.inspect_gguf import read_gguf

    reader = read_gguf(Path(path))
    scalars: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the container's own header fields, not model facts
            continue
        value = field.contents()
        (arrays if isinstance(value, list) else scalars)[key] = value
    file_type = scalars.get("general.file_type")
    try:
        quant = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        quant = "unknown"
    params = sum(int(t.n_elements) for t in reader.tensors)
    return {"scalars": scalars, "arrays": arrays, "parameters": params, "quantization": quant}


def gguf_facts(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return _gguf_facts(str(path), stat.st_mtime_ns, stat.st_size)


def parameter_size(n: int) -> str:
    """As Ollama writes it: 8.0B, 134.52M."""
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M".replace(".00M", "M")
    return f"{n / 1e3:.2f}K".replace(".00K", "K")


def details(facts: dict[str, Any]) -> dict[str, Any]:
    family = str(facts["scalars"].get("general.architecture", "llama"))
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
            "parameter_size": parameter_size(facts["parameters"]), "quantization_level": facts["quantization"]}


def _digest(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()


def _describe(entry: Any) -> dict[str, Any] | None:
    """/api/tags' entry for a registry entry, or None when its file is not known or not readable."""
    path = Path(entry.path) if entry.path else None
    if path is None:
        return None
    try:
        facts = gguf_facts(path)
        stat = path.stat()
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not hide the others
        logger.warning("%s: %s", path, exc)
        return None
    name = display_name(entry.alias)
    return {"name": name, "model": name, "modified_at": rfc3339(stat.st_mtime), "size": stat.st_size,
            "digest": _digest(path), "details": details(facts)}


@router.get("/api/version")
async def version() -> dict[str, str]:
    """Ollama's API version our routes follow; lcpp-zh's own version beside it."""
    return {"version": OLLAMA_API_VERSION, "lcpp_zh": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """Every model this server can serve: the loaded ones and the GGUFs it would load on first use."""
    entries = request.app.state.lcpp.registry.entries()
    described = await asyncio.to_thread(lambda: [_describe(e) for e in entries])
    return {"models": [d for d in described if d is not None]}


def _size_vram(entry: Any, size: int) -> int:
    """An estimate from the offload plan ("20/30 layers offloaded: ..."): the offloaded share of the file."""
    plan = str(getattr(entry.model.engine, "plan", "") or "")
    match = _OFFLOADED.match(plan)
    if not match or not int(match.group(2)):
        return 0
    return size * int(match.group(1)) // int(match.group(2))


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """The models loaded now, with when their keep-alive ends."""
    entries = [e for e in request.app.state.lcpp.registry.entries() if e.status == "loaded" and e.model is not None]
    described = await asyncio.to_thread(lambda: [(e, _describe(e)) for e in entries])
    models = []
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    for entry, info in described:
        if info is None:
            continue
        expires = rfc3339(entry.expires_at) if entry.expires_at is not None else \
            (now + _FOREVER).isoformat().replace("+00:00", "Z")
        n_ctx = getattr(entry.model.engine, "n_ctx_slot", None)
        models.append({**{k: info[k] for k in ("name", "model", "size", "digest", "details")},
                       "expires_at": expires, "size_vram": _size_vram(entry, info["size"]),
                       "context_length": n_ctx})
    return {"models": models}


def _find_entry(request: Request, name: str) -> Any:
    if not name:
        raise ApiError(400, "model is required", param="model")
    for entry in request.app.state.lcpp.registry.entries():
        if name in (entry.alias, display_name(entry.alias)):
            return entry
    raise ApiError(404, f"model {name!r} not found; /api/tags lists the models this server has", param="model")


def _parameters_text(metadata: dict[str, Any], n_ctx: int | None) -> str:
    """Ollama's `parameters`: one `name value` line per setting, with the model's own sampling defaults."""
    from lcpp_zh.runtime.gguf_defaults import sampling_defaults

    params = sampling_defaults({k: str(v) for k, v in metadata.items()})
    lines = [("temperature", params.temperature), ("top_k", params.top_k), ("top_p", params.top_p),
             ("min_p", params.min_p), ("repeat_penalty", params.repeat_penalty),
             ("repeat_last_n", params.repeat_last_n)]
    if n_ctx:
        lines.append(("num_ctx", n_ctx))
    return "\n".join(f"{key:<30} {value}" for key, value in lines)


def _template_source(entry: Any, facts: dict[str, Any]) -> str:
    """The chat template prompts are rendered with: the loaded model's resolved one, else the GGUF's."""
    if entry.model is not None:
        from lcpp_zh.templates import template_for_engine

        try:
            return template_for_engine(entry.model.engine, entry.model.template).source
        except Exception as exc:  # noqa: BLE001 - /api/show still answers without it
            logger.warning("%s: no template to show (%s)", entry.alias, exc)
    return str(facts["scalars"].get("tokenizer.chat_template", ""))


@router.post("/api/show")
async def show(body: OllamaShowRequest, request: Request) -> dict[str, Any]:
    """Model facts from the GGUF header, the chat template, the sampling defaults."""
    entry = _find_entry(request, body.model or body.name or "")
    if entry.path is None:
        raise ApiError(404, f"model {entry.alias!r} has no file yet (it is converted on first use)", param="model")
    path = Path(entry.path)
    facts = await asyncio.to_thread(gguf_facts, path)
    info = dict(facts["scalars"])
    info["general.parameter_count"] = facts["parameters"]
    for key, value in facts["arrays"].items():  # token lists are large: only when asked, as Ollama
        info[key] = value if body.verbose else []
    n_ctx = getattr(entry.model.engine, "n_ctx_slot", None) if entry.model is not None else None
    parameters = _parameters_text(facts["scalars"], n_ctx)
    template = await asyncio.to_thread(_template_source, entry, facts)
    modelfile = (f"# Modelfile generated by lcpp-zh\nFROM {path}\n"
                 + "".join(f"PARAMETER {line.split()[0]} {line.split()[1]}\n" for line in parameters.splitlines()))
    capabilities = ["completion"]
    return {"modelfile": modelfile, "parameters": parameters, "template": template, "details": details(facts),
            "model_info": info, "capabilities": capabilities, "modified_at": rfc3339(path.stat().st_mtime),
            "license": str(facts["scalars"].get("general.license", ""))}
