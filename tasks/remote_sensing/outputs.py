"""What a remote-sensing run writes: class maps (GeoTIFF + coloured PNG), confusion matrix, learned groups.

The class map GeoTIFF carries the test scene's CRS and transform (uint8 class
numbers, 0 = no prediction) and a colour table, so GIS software shows it
coloured; the PNG draws the same map with a legend. Colours come from
matplotlib's `tab20` in class order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.engine.report import save_figure


def class_colors(num_classes: int) -> list[tuple[float, float, float]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [tuple(cmap(i % 20)[:3]) for i in range(num_classes)]


def write_class_map(path: str | Path, classes: np.ndarray, crs, transform, num_classes: int) -> None:
    """Class numbers 1..N (0 = none) as a uint8 GeoTIFF with the scene's grid and a colour table."""
    from rasterio.io import MemoryFile

    from core.engine.runs import atomic_write_bytes

    profile = {"driver": "GTiff", "height": classes.shape[0], "width": classes.shape[1], "count": 1,
               "dtype": "uint8", "nodata": 0, "compress": "deflate"}
    if crs is not None:
        profile["crs"] = crs
    if transform is not None:
        profile["transform"] = transform
    colormap = {0: (0, 0, 0, 0)}
    for i, rgb in enumerate(class_colors(num_classes), start=1):
        colormap[i] = tuple(int(round(255 * v)) for v in rgb) + (255,)
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(classes.astype(np.uint8), 1)
            dst.write_colormap(1, colormap)
            dst.set_band_description(1, "predicted class (0 = none)")
        payload = memory.read()
    atomic_write_bytes(path, payload)


def plot_class_map(path: str | Path, classes: np.ndarray, class_names: Sequence[str], title: str = "") -> None:
    """The map in class colours (0 black) with a legend of the class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colors = [(0.0, 0.0, 0.0)] + class_colors(len(class_names))
    h, w = classes.shape
    fig, ax = plt.subplots(figsize=(min(12, 2 + 6 * w / max(h, w) + 2.5), min(10, 1 + 6 * h / max(h, w))), dpi=120)
    ax.imshow(classes, cmap=ListedColormap(colors), vmin=0, vmax=len(class_names), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    handles = [Patch(color=colors[i + 1], label=f"{i + 1} {name}") for i, name in enumerate(class_names)]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    save_figure(fig, path)


def plot_confusion(path: str | Path, confusion: Sequence[Sequence[int]], class_names: Sequence[str],
                   title: str = "") -> None:
    """Row-normalised confusion matrix (rows: reference, columns: predicted) with the counts written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * n, 1.5 + 0.55 * n), dpi=120)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title or "confusion matrix (row-normalised colours, counts)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


def plot_groups(path: str | Path, report: Sequence[dict], title: str = "") -> None:
    """Learned number of groups per DGConv layer (the blocks of its effective mask) and its weight density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["layer"] for r in report]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4), dpi=120)
    ax.bar(range(len(names)), [r["blocks"] for r in report], color="tab:blue", label="groups (blocks of U)")
    ax.set_yscale("log", base=2)
    ax.set_ylim(0.5, 2 * max([r["blocks"] for r in report] + [1]))
    ax.set_ylabel("groups")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    twin = ax.twinx()
    twin.plot(range(len(names)), [r["density"] for r in report], "o-", color="tab:red", label="kept weights")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("fraction of weights kept")
    ax.set_title(title or "learned grouping per DGConv layer")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], loc="upper left", fontsize=8)
    save_figure(fig, path)


__all__ = ["class_colors", "plot_class_map", "plot_confusion", "plot_groups", "write_class_map"]
