"""Progress bars for long CLI steps: drawn on stderr, off when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click


@contextmanager
def byte_progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A `progress(done, total)` callback drawing a tqdm bar, or None when nothing should be drawn."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


# Units of the bars by stage; any other stage counts chunks.
_STAGE_UNITS = {"convert": ("B", True), "types": ("type", False)}


@contextmanager
def stage_progress(quiet: bool, keep: tuple[str, ...] = ()) -> Iterator[Callable[[str, int, int], None] | None]:
    """A `progress(stage, done, total)` callback drawing one tqdm bar per stage (eval's base and model, the
    advisor's conversion and types), or None. A finished stage's bar goes away unless it is in `keep`."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            unit, scale = _STAGE_UNITS.get(stage, ("chunk", False))
            bars[stage] = tqdm(desc=stage, total=total, unit=unit, unit_scale=scale, file=sys.stderr,
                               leave=stage in keep)
        bar = bars[stage]
        bar.update(done - bar.n)
        if done >= total and stage not in keep:
            bar.close()
            del bars[stage]

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


def report_written(path: Path, started: float, quiet: bool) -> None:
    """The CLI's result: `wrote PATH (SIZE) in T s` on stderr (unless quiet), the path alone on stdout."""
    if not quiet:
        click.echo(f"wrote {path} ({human_size(path.stat().st_size)}) in {time.monotonic() - started:.1f} s",
                   err=True)
    click.echo(str(path))


def human_size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} TiB"
