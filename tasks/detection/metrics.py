"""COCO mAP with pycocotools, COCO-format detection files, and a PNG grid of drawn boxes."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from core.engine.report import save_figure
from core.engine.runs import atomic_write_text

#: COCOeval.stats order
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@torch.no_grad()
def predict(model: nn.Module, dataset, batch_size: int = 8, progress: bool = False,
            device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Run `model` over `dataset`; COCO result records (`image_id`, `category_id`, xywh `bbox`, `score`)."""
    from tasks.detection.data import collate

    model.eval()
    records = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, targets in tqdm(loader, desc="detect", unit="batch", disable=not progress, leave=False):
        outputs = model([im.to(device) for im in images])
        for out, target in zip(outputs, targets):
            boxes = out["boxes"].cpu()
            for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist()):
                records.append({"image_id": int(target["image_id"]),
                                "category_id": int(dataset.category_ids[label - 1]),
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                "score": round(float(score), 5)})
    return records


def coco_map(coco_gt, records: Sequence[dict[str, Any]], image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """AP, AP50, AP75, APs/m/l (COCOeval, bbox) in percent; all zeros when there are no detections."""
    from pycocotools.cocoeval import COCOeval

    if not records:
        return {name: 0.0 for name in METRIC_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in records])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval reports -1 where a size range has no ground truth; report 0 there
    return {name: max(0.0, float(v)) * 100.0 for name, v in zip(METRIC_NAMES, evaluator.stats[:6])}


def map_table(metrics: dict[str, float]) -> str:
    head = " | ".join(f"{n:>6}" for n in METRIC_NAMES)
    row = " | ".join(f"{metrics.get(n, 0.0):6.2f}" for n in METRIC_NAMES)
    return f"| {head} |\n|{'|'.join(['-' * 8] * len(METRIC_NAMES))}|\n| {row} |\n"


def write_detections(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    atomic_write_text(path, json.dumps(list(records)))


def draw_grid(path: str | Path, dataset, records: Sequence[dict[str, Any]], count: int = 8,
              score_threshold: float = 0.3, columns: int = 4) -> None:
    """A PNG grid of the first `count` images with detections (red, labelled) and ground truth (green, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ids = dataset.ids[:count]
    by_image: dict[int, list] = {}
    for r in records:
        if r["score"] >= score_threshold:
            by_image.setdefault(r["image_id"], []).append(r)
    names = {cid: n for cid, n in zip(dataset.category_ids, dataset.class_names)}
    rows = max(1, -(-len(ids) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image_id in zip(axes.flat, ids):
        ax.imshow(dataset.image(image_id).permute(1, 2, 0).numpy())
        for ann in dataset.coco.imgToAnns.get(image_id, []):
            x, y, w, h = ann["bbox"]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="lime", lw=1, ls="--"))
        for r in by_image.get(image_id, []):
            x, y, w, h = r["bbox"]
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec="red", lw=1.5))
            ax.text(x, y, f"{names.get(r['category_id'], r['category_id'])} {r['score']:.2f}", color="white",
                    fontsize=6, va="bottom", bbox={"facecolor": "red", "alpha": 0.6, "pad": 0.5, "lw": 0})
        ax.set_title(f"image {image_id}", fontsize=7)
    fig.suptitle(f"detections (red, score >= {score_threshold}) and ground truth (green)", fontsize=9)
    save_figure(fig, path)


__all__ = ["METRIC_NAMES", "coco_map", "draw_grid", "map_table", "predict", "write_detections"]
