"""What a server can serve, by alias: the models named on the command line, then the GGUFs found in
--models-dir and in the cache (a stat per file, rescanned at most every few seconds).

Only names and files live here; loading, leases and keep-alive are lcpp_zh.server.registry's. Aliases are
looked up in a table: a request's model name is never turned into a path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Scanning is a stat per file: cheap, but /v1/models polled by a page every few seconds need not repeat it.
RESCAN_S = 2.0


@dataclass(eq=False)
class Slot:
    """One servable model and its loading state (mutated by the registry on the event loop only)."""

    alias: str
    name: str                    # what the loader resolves: a command-line MODEL or a GGUF path
    named: bool                  # given on the command line
    path: Path | None = None
    size_bytes: int | None = None
    template_name: str | None = None
    model: Any = None            # the ServedModel while loaded
    loading: Any = None          # the asyncio.Task loading it
    room: bool = False           # its load has a place under --max-loaded (past waiting for room)
    closing: int = 0             # unloads of it still closing their runner
    users: int = 0               # leases held
    waiters: int = 0             # requests waiting for it to load
    draining: bool = False       # unload once its requests end; new ones wait for the reload
    keep_alive: float | None = None
    last_used: float = 0.0       # time.monotonic() of the last acquire or release
    expires_at: float | None = None
    timer: Any = None            # the asyncio.TimerHandle of its keep-alive
    error: str | None = None     # why the last load failed

    @property
    def busy(self) -> bool:
        return self.users > 0 or self.waiters > 0 or self.loading is not None


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def _file_of(name: str) -> Path | None:
    path = Path(name).expanduser()
    try:
        return path.resolve() if path.is_file() else None
    except OSError:
        return None


class Catalog:
    """The aliases a server answers to, in a stable order: named models first, then the folders' files."""

    def __init__(self, named: Sequence[tuple[str, str]], *, named_template: str | None = None,
                 models_dir: Path | None = None, scan_cache: bool = True) -> None:
        self._named: dict[str, Slot] = {}
        for alias, name in named:
            file = _file_of(name)
            self._named[alias] = Slot(alias, name, True, file, _size(file), named_template)
        self._found: dict[str, Slot] = {}
        self._folders = [Path(models_dir).expanduser()] if models_dir is not None else []
        self._scan_cache = scan_cache
        self._scanned_at = -RESCAN_S

    def add_loaded(self, model: Any) -> Slot:
        """A model loaded by someone else (the older whole-list loader), as a named one."""
        if model.alias in self._named:
            raise ValueError(f"alias {model.alias!r} is used twice; give each model its own alias")
        path = Path(model.path) if model.path is not None else None
        slot = Slot(model.alias, str(path or model.alias), True, path, _size(path), model.template_name, model=model)
        self._named[model.alias] = slot
        return slot

    @property
    def named_aliases(self) -> list[str]:
        return list(self._named)

    def slots(self, refresh: bool = False) -> list[Slot]:
        if refresh:
            self._refresh()
        return [*self._named.values(), *self._found.values()]

    def find(self, alias: str) -> Slot | None:
        """The slot for an alias as a client sends it; `NAME:latest` (Ollama clients add the tag) and the file
        name `NAME.gguf` (as `lcpp-zh list` shows it) find NAME."""
        for refresh in (False, True):  # a file added since the last scan is found on the next scan
            if refresh:
                self._refresh()  # rate-limited: unknown names sent in a loop cost no stat storm
            for candidate in (alias, alias.removesuffix(":latest"), alias.removesuffix(".gguf")):
                slot = self._named.get(candidate) or self._found.get(candidate)
                if slot is not None:
                    return slot
        return None

    def default(self) -> Slot | None:
        """For requests that name no model (the seed's /generate): the first named model, else the one
        loaded most recently used, else the only model there is."""
        if self._named:
            return next(iter(self._named.values()))
        loaded = [s for s in self._found.values() if s.model is not None]
        if loaded:
            return max(loaded, key=lambda s: s.last_used)
        self._refresh()
        return next(iter(self._found.values())) if len(self._found) == 1 else None

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._scanned_at < RESCAN_S:
            return
        self._scanned_at = now
        files = self._scan()
        for alias in [a for a, slot in self._found.items() if a not in files and not slot.busy and slot.model is None]:
            del self._found[alias]  # removed from disk and not in use
        for alias, (path, size) in files.items():
            slot = self._found.get(alias)
            if slot is None:
                self._found[alias] = Slot(alias, str(path), False, path, size)
            elif slot.model is None:
                slot.path, slot.size_bytes, slot.name = path, size, str(path)

    def _scan(self) -> dict[str, tuple[Path, int]]:
        """alias -> (file, size) for --models-dir, then the cache; the first of two equal aliases wins, and a
        file already served under a command-line alias is not listed twice."""
        from lcpp_zh.resolve import gguf_files, models_dir

        taken = {slot.path for slot in self._named.values() if slot.path is not None}
        folders = [*self._folders, *([models_dir()] if self._scan_cache else [])]
        files: dict[str, tuple[Path, int]] = {}
        for folder in folders:
            for found in gguf_files(folder):
                alias = found.name.removesuffix(".gguf")
                try:
                    resolved = found.path.resolve()
                except OSError:
                    continue
                if alias in self._named or alias in files or resolved in taken:
                    continue
                files[alias] = (found.path, found.size)
        return files
