"""What a translation run leaves to read: image grids and a params/MACs/latency table of several generators."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from tasks.image_translation.metrics import to_unit


def save_grid(path: str | Path, columns: Sequence[torch.Tensor], pad: int = 2) -> None:
    """One row per image, one column per tensor batch (e.g. input | teacher | student | target), as a PNG."""
    import io

    from PIL import Image
    from torchvision.utils import make_grid

    from core.engine.runs import atomic_write_bytes

    cols = [to_unit(c.detach().cpu()) for c in columns]
    cols = [c.repeat(1, 3, 1, 1) if c.shape[1] == 1 else c for c in cols]
    rows = torch.stack(cols, 1).flatten(0, 1)  # image 0's columns, then image 1's, ...
    grid = make_grid(rows, nrow=len(cols), padding=pad, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def cost_rows(models: Mapping[str, nn.Module], example: torch.Tensor, latency: bool = True, threads: int = 1,
              repeats: int = 20) -> list[dict[str, float | str]]:
    """Params, MACs and (median, batch 1, `threads` threads) CPU latency of each generator, side by side."""
    from core.cost import count_macs, count_params, measure_latency

    rows = []
    for name, model in models.items():
        model = model.cpu().eval()
        row: dict[str, float | str] = {"model": name, "params": float(count_params(model)),
                                       "macs": float(count_macs(model, example.cpu()))}
        if latency:
            row["latency_ms"] = measure_latency(model, tuple(example.shape[1:]), batch=1, threads=threads,
                                                repeats=repeats).median_ms
        rows.append(row)
    return rows


__all__ = ["save_grid", "cost_rows"]
