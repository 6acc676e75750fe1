"""Measuring codecs on images: through the real bitstream, for learned codecs and Pillow's alike.

A codec here is anything with `compress(uint8 (3, H, W)) -> bytes` and `decompress(bytes) -> uint8
(3, H, W)`: a trained `Codec` (after `update()`) or a `PillowCodec`. Rates are bits of the bytes
over the image's pixels; qualities are measured on the decoded 8-bit image; encode and decode
times are wall-clock per image (single-threaded when the caller sets torch's threads to 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from tasks.image_compression.metrics import bd_quality, bd_rate, image_metrics


class ImageCodec(Protocol):
    def compress(self, image: torch.Tensor) -> bytes: ...

    def decompress(self, data: bytes) -> torch.Tensor: ...


def round_trip(codec: ImageCodec, image: torch.Tensor) -> tuple[torch.Tensor, bytes, float, float]:
    """(decoded image, bytes, encode seconds, decode seconds)."""
    start = time.perf_counter()
    data = codec.compress(image)
    middle = time.perf_counter()
    decoded = codec.decompress(data)
    return decoded, data, middle - start, time.perf_counter() - middle


def evaluate_images(codec: ImageCodec, images: Sequence[torch.Tensor] | Dataset,
                    names: Sequence[str] | None = None, keep: int = 0) -> tuple[list[dict[str, Any]], list]:
    """Per-image rows (name, bytes, bpp, psnr, ms_ssim, ms_ssim_db, encode_ms, decode_ms) and the first
    `keep` decoded images."""
    rows, decoded_images = [], []
    for i in range(len(images)):
        image = images[i]
        decoded, data, t_enc, t_dec = round_trip(codec, image)
        row = {"image": names[i] if names else str(i), **image_metrics(image, decoded, data),
               "encode_ms": 1e3 * t_enc, "decode_ms": 1e3 * t_dec}
        rows.append(row)
        if i < keep:
            decoded_images.append(decoded)
    return rows, decoded_images


def mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means over images of every numeric column (rate and quality averaged per image, as Kodak tables do)."""
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


@torch.no_grad()
def downstream(codec: ImageCodec | None, classifier: nn.Module, dataset: Dataset,
               batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracy of `classifier` on `dataset`'s images after a round trip through `codec` (None: the
    originals), with the mean bpp those images took."""
    classifier.eval()
    correct, total, bpps, batch, labels = 0, 0, [], [], []

    def flush():
        nonlocal correct, total
        x = torch.stack(batch).float().div(255.0)
        correct += int((classifier(x).argmax(1) == torch.tensor(labels)).sum())
        total += len(labels)
        batch.clear()
        labels.clear()

    for i in range(len(dataset)):
        image, label = dataset[i]
        if codec is not None:
            data = codec.compress(image)
            bpps.append(8.0 * len(data) / (image.shape[1] * image.shape[2]))
            image = codec.decompress(data)
        batch.append(image)
        labels.append(int(label))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return {"accuracy": correct / max(total, 1), "bpp": float(np.mean(bpps)) if bpps else math.nan}


@dataclass
class Curve:
    """Points of one codec family over its rate sweep: one dict of mean metrics per rate point."""

    label: str
    points: list[dict[str, float]] = field(default_factory=list)

    def column(self, key: str) -> list[float]:
        return [p[key] for p in self.points]

    def sorted(self) -> "Curve":
        return Curve(self.label, sorted(self.points, key=lambda p: p["bpp"]))


def measure_curve(label: str, codecs: Iterable[ImageCodec], images: Sequence[torch.Tensor] | Dataset,
                  classifier: nn.Module | None = None, labelled_test: Dataset | None = None,
                  settings: Sequence[dict[str, Any]] | None = None) -> Curve:
    """Mean image metrics (and downstream accuracy with its own bpp, `acc_bpp`) for each codec of a sweep."""
    curve = Curve(label)
    for i, codec in enumerate(codecs):
        rows, _ = evaluate_images(codec, images)
        point = mean_row(rows)
        if settings:
            point.update(settings[i])
        if classifier is not None and labelled_test is not None:
            result = downstream(codec, classifier, labelled_test)
            point.update(accuracy=result["accuracy"], acc_bpp=result["bpp"])
        curve.points.append(point)
    return curve.sorted()


def compare(anchor: Curve, test: Curve) -> dict[str, float]:
    """BD-rate (PSNR and MS-SSIM dB), BD-PSNR, and BD-accuracy of `test` against `anchor`."""
    out = {"bd_rate_psnr": bd_rate(anchor.column("bpp"), anchor.column("psnr"), test.column("bpp"),
                                   test.column("psnr")),
           "bd_rate_ms_ssim": bd_rate(anchor.column("bpp"), anchor.column("ms_ssim_db"), test.column("bpp"),
                                      test.column("ms_ssim_db")),
           "bd_psnr": bd_quality(anchor.column("bpp"), anchor.column("psnr"), test.column("bpp"),
                                 test.column("psnr"))}
    if all("accuracy" in p for p in anchor.points + test.points):
        out["bd_accuracy"] = bd_quality(anchor.column("acc_bpp"), anchor.column("accuracy"),
                                        test.column("acc_bpp"), test.column("accuracy"))
    return out


def rate_saving_at(anchor: Curve, bpp: float, psnr: float) -> float:
    """One point against a curve: the percent of bits it saves over `anchor` at its own PSNR
    (anchor's rate at that PSNR, log-linear between the nearest anchor points; NaN outside the curve)."""
    q, r = np.asarray(anchor.column("psnr")), np.asarray(anchor.column("bpp"))
    order = np.argsort(q)
    q, r = q[order], r[order]
    if psnr < q[0] or psnr > q[-1]:
        return math.nan
    rate = float(np.exp(np.interp(psnr, q, np.log(r))))
    return 100.0 * (bpp / rate - 1.0)


def closest_by_rate(codecs: Sequence[ImageCodec], image: torch.Tensor, bpp: float) -> tuple[Any, torch.Tensor, float]:
    """The codec of a sweep whose bitstream for `image` is closest to `bpp` (for side-by-side pictures)."""
    best = None
    for codec in codecs:
        decoded, data, _, _ = round_trip(codec, image)
        rate = 8.0 * len(data) / (image.shape[1] * image.shape[2])
        if best is None or abs(math.log(rate / bpp)) < abs(math.log(best[2] / bpp)):
            best = (codec, decoded, rate)
    return best


__all__ = ["ImageCodec", "round_trip", "evaluate_images", "mean_row", "downstream", "Curve", "measure_curve",
           "compare", "rate_saving_at", "closest_by_rate"]
