"""Tables and plots a person reads at the end of a run."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.engine.runs import atomic_write_text


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1e6:
            return f"{value / 1e6:.2f}M"
        if abs(value) >= 1e3:
            return f"{value / 1e3:.1f}K"
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return fmt(float(value)) if abs(value) >= 1e4 else str(value)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table (numbers humanised: 1.23M params, 4.5K MACs)."""
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, rule, *body])


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def pareto_plot(path: str | Path, all_points: Sequence[tuple[float, float]], front: Sequence[tuple[float, float]],
                xlabel: str, ylabel: str, title: str, marked: Sequence[tuple[str, float, float]] = (),
                xlimit: tuple[str, float] | None = None) -> None:
    """Scatter of every evaluated arch with the Pareto front drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    if all_points:
        xs, ys = zip(*all_points)
        ax.scatter(xs, ys, s=12, alpha=0.45, color="tab:gray", label="evaluated")
    if front:
        fx, fy = zip(*sorted(front))
        ax.step(fx, fy, where="post", color="tab:red", lw=1.5)
        ax.scatter(fx, fy, s=28, color="tab:red", label="Pareto front", zorder=3)
    if xlimit is not None:
        ax.axvline(xlimit[1], color="tab:blue", ls="--", lw=1, label=xlimit[0])
    for label, x, y in marked:
        ax.scatter([x], [y], s=60, marker="*", zorder=4, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int | None = None) -> None:
    """Write a matplotlib figure atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_suffix(".tmp" + Path(path).suffix)
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
