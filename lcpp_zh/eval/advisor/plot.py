"""The advisor's picture: mean KLD (log scale) against file size, one labelled point per quantization, the
recommended one marked and the memory limit as a vertical line (at the largest file that fits once the KV
cache and the overhead are set aside). A PNG through matplotlib (the optional `plot` extra), or characters for
a terminal (always available).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lcpp_zh.common.atomic import atomic_path

# matplotlib is the `plot` extra: the PNG needs it, the terminal plot does not.
PLOT_EXTRA = "pip install 'lcpp-zh[plot]'"


def png_available() -> bool:
    """Whether matplotlib can be imported here (write_png needs it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class PlotPoint:
    label: str
    size: int  # file bytes
    kld: float
    recommended: bool = False


def plot_points(report) -> tuple[list[PlotPoint], float | None]:
    """The points of an AdvisorReport (types with a KLD above zero) and the file-size limit in bytes."""
    choice = report.recommendation.choice if report.recommendation else None
    points = [PlotPoint(r.type, r.size, r.kld_mean, r.type == choice) for r in report.rows
              if not r.base and r.kld_mean is not None and r.kld_mean > 0]
    sized = [r for r in report.rows if not r.base and r.size]
    # needed = size + (KV + overhead): the same margin for every type of one model.
    margin = sized[0].needed - sized[0].size if sized else 0
    return points, (report.memory - margin if report.memory else None)


def _unit(points: Sequence[PlotPoint]) -> tuple[float, str]:
    largest = max((p.size for p in points), default=0)
    return (1e9, "GB") if largest >= 2e9 else (1e6, "MB")


def write_png(points: Sequence[PlotPoint], limit: float | None, destination: Path, title: str) -> Path:
    """Draw the points into `destination` (PNG, written atomically); returns it."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and no GUI backend chosen behind the user's back
    import matplotlib.pyplot as plt

    scale, unit = _unit(points)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    try:
        xs = [p.size / scale for p in points]
        ax.scatter(xs, [p.kld for p in points], s=30, color="#1f77b4", zorder=3)
        for p, x in zip(points, xs, strict=True):
            ax.annotate(p.label, (x, p.kld), textcoords="offset points", xytext=(5, 4), fontsize=8)
        chosen = [p for p in points if p.recommended]
        if chosen:
            ax.scatter([chosen[0].size / scale], [chosen[0].kld], s=220, marker="*", color="#d62728", zorder=4,
                       label=f"recommended: {chosen[0].label}")
        right = max(xs, default=1.0)
        if limit is not None and 0 < limit / scale <= 1.5 * right:
            ax.axvline(limit / scale, color="#d62728", linestyle="--", linewidth=1,
                       label=f"memory limit (largest file that fits: {limit / scale:.2f} {unit})")
        elif limit is not None and limit > 0:
            ax.text(0.98, 0.95, f"memory limit: files up to {limit / scale:,.0f} {unit} fit",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8, color="#d62728")
        ax.set_yscale("log")
        ax.set_xlabel(f"file size ({unit})")
        ax.set_ylabel("mean KL divergence from the base (log scale)")
        ax.set_title(textwrap.fill(title, 100), fontsize=9)  # long model names would run off the picture
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        destination = Path(destination)
        with atomic_path(destination) as temporary:
            fig.savefig(temporary, format="png")
    finally:
        plt.close(fig)
    return destination


# Drawn by hand rather than with plotext: a dozen labelled points on one log axis is some forty lines, and
# plotext 6 replaced the whole API of plotext 5 (scatter, text, vline are gone), which a dependency should not.
def render_terminal(points: Sequence[PlotPoint], limit: float | None, *, width: int = 72, height: int = 18) -> str:
    """The plot as text: `*` the recommended point, `o` the others, `|` the memory limit, labels beside."""
    if not points:
        return "(no quantization to plot)"
    scale, unit = _unit(points)
    xs = [p.size / scale for p in points]
    logs = [math.log10(p.kld) for p in points]
    x_lo, x_hi = 0.0, max(xs) * 1.08
    show_limit = limit is not None and 0 < limit / scale <= 1.5 * max(xs)
    if show_limit:
        x_hi = max(x_hi, limit / scale * 1.05)
    y_lo, y_hi = math.floor(min(logs)), math.ceil(max(logs))
    if y_hi == y_lo:
        y_hi += 1
    grid = [[" "] * width for _ in range(height)]

    def col(x: float) -> int:
        return min(width - 1, int(round((x - x_lo) / (x_hi - x_lo) * (width - 1))))

    def row(y: float) -> int:
        return min(height - 1, int(round((y_hi - y) / (y_hi - y_lo) * (height - 1))))

    if show_limit:
        for r in range(height):
            grid[r][col(limit / scale)] = "|"
    for p, x, y in sorted(zip(points, xs, logs, strict=True), key=lambda t: t[0].recommended):
        r, c = row(y), col(x)
        grid[r][c] = "*" if p.recommended else "o"
        right = c + 1 + len(p.label) < width
        text = " " + p.label if right else p.label + " "
        start = c + 1 if right else c - len(text)
        span = range(start, start + len(text))
        if start >= 0 and all(grid[r][i] in " |" for i in span):  # a label covering another point is left out
            for i, ch in zip(span, text, strict=True):
                grid[r][i] = ch
    lines = []
    for r, cells in enumerate(grid):
        y = y_hi - r * (y_hi - y_lo) / (height - 1)
        axis = f"{10 ** y:8.0e} ┤" if r % 4 == 0 or r == height - 1 else " " * 8 + " │"
        lines.append(axis + "".join(cells).rstrip())
    lines.append(" " * 9 + "└" + "─" * width)
    ticks = [x_lo + i * (x_hi - x_lo) / 4 for i in range(5)]
    lines.append(" " * 10 + "".join(f"{t:<{width // 4}.{_decimals(x_hi)}f}" for t in ticks[:4]) + f"{ticks[4]:.{_decimals(x_hi)}f}")
    legend = f"mean KLD (log) against file size ({unit}); * recommended, o others"
    if show_limit:
        legend += f", | memory limit (files up to {limit / scale:.2f} {unit})"
    lines.append(" " * 10 + legend)
    return "\n".join(lines)


def _decimals(top: float) -> int:
    return 0 if top >= 100 else 1 if top >= 10 else 2
