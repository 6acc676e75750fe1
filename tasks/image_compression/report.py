"""Pictures a person reads after a test: rate-distortion and rate-accuracy curves, reconstructions side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from core.engine.report import save_figure
from tasks.image_compression.evaluate import Curve

STYLES = {"jpeg": ("tab:gray", "s", "--"), "webp": ("tab:olive", "^", "--")}


def curve_plot(path: str | Path, curves: Sequence[Curve], y: str, ylabel: str, title: str, x: str = "bpp",
               xlabel: str = "bits per pixel (from the bitstream)") -> None:
    """One line per curve (points sorted by rate); JPEG and WebP dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for i, curve in enumerate(curves):
        points = sorted((p[x], p[y]) for p in curve.points if x in p and y in p)
        if not points:
            continue
        xs, ys = zip(*points)
        colour, marker, line = STYLES.get(curve.label.split()[0].lower(), (f"C{i}", "o", "-"))
        ax.plot(xs, ys, line, marker=marker, color=colour, label=curve.label, lw=1.5, ms=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def side_by_side(path: str | Path, panels: Sequence[tuple[str, torch.Tensor]], title: str = "") -> None:
    """Images (uint8 (3, H, W)) in one row, each with its caption (codec, bpp, PSNR)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = panels[0][1].shape[-2:]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) * w / max(h, w) + 0.4, 3.6), dpi=150)
    for ax, (caption, image) in zip(axes, panels):
        ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


__all__ = ["curve_plot", "side_by_side"]
