"""Export a trained network to ONNX and TorchScript, each checked against the PyTorch output."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from core.engine.runs import atomic_write_bytes


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> float:
    """Write ONNX (dynamic batch) and return the max |onnxruntime - PyTorch| on `example`."""
    import onnxruntime as ort

    model.eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    atomic_write_bytes(path, buffer.getvalue())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = _first(model(example)).numpy()
    got = session.run(None, {"input": example.numpy()})[0]
    return float(abs(got - expected).max())


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> float:
    """Trace to TorchScript and return the max |scripted - eager| on `example`."""
    model.eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        loaded = torch.jit.load(str(path))
        return float((_first(loaded(example)) - _first(model(example))).abs().max())


def export_model(model: nn.Module, example: torch.Tensor, out_dir: Path, formats: Sequence[str],
                 opset: int = 17, atol: float = 1e-4) -> list[dict]:
    exporters = {"onnx": ("model.onnx", lambda p: export_onnx(model, example, p, opset)),
                 "torchscript": ("model.ts", lambda p: export_torchscript(model, example, p))}
    rows = []
    for fmt in formats:
        if fmt not in exporters:
            raise ValueError(f"export.formats: unknown format {fmt!r}; known: {sorted(exporters)}")
        name, run = exporters[fmt]
        diff = run(out_dir / name)
        rows.append({"format": fmt, "path": str(out_dir / name), "max_abs_diff": diff,
                     "check": "ok" if diff <= atol else f"FAILED (> {atol:g})"})
    return rows
