"""Latency lookup tables: measure each distinct layer once, predict an arch as the sum of its layers.

This is the per-operator latency model of ProxylessNAS (Cai et al., ICLR 2019)
and FBNet (Wu et al., CVPR 2019): a network's latency is approximated by the
sum of the latencies of its layers, each measured in isolation at its own
input resolution. A space of 10^15 archs has only a few hundred distinct
layers, so the table is cheap to fill and predictions are instant.

The protocol a space implements::

    space.layer_specs(arch, input_size=..., **build_overrides) -> list[LayerSpec]

in forward order, covering every layer of `space.build(arch, **build_overrides)`
(layers that cost nothing, like identity, may be left out). The first spec's
`input_shape` is the network's input shape. A spec's `key` must describe the
op completely (type, channels, stride, kernel, expansion, input resolution,
activation, ...): two specs with the same key must build modules of the same
latency, since only one of them is ever measured.

The sum ignores what happens between layers (memory traffic, framework
overhead per call, fusion across layers), so it is biased; what a search needs
is mostly the ranking. `prediction_error` reports both the relative error and
the Spearman rank correlation against measured end-to-end latency.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.cost.latency import measure_latency

FORMAT = "archforge-latency-table/1"


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a network, as the latency table sees it.

    `key` uniquely describes the op; `make()` builds a fresh module for it;
    `input_shape` is one sample's input shape, batch excluded, e.g. `(24, 56, 56)`.
    """

    key: str
    make: Callable[[], nn.Module]
    input_shape: tuple


def device_name(device: str) -> str:
    """A human-readable name of the hardware behind `device` (the GPU model, or the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return platform.processor() or platform.machine() or "cpu"


def _rank(values: Sequence[float]) -> list[float]:
    """Ranks starting at 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (nan when either is constant)."""
    ra, rb = _rank(a), _rank(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var_a = sum((x - ma) ** 2 for x in ra)
    var_b = sum((y - mb) ** 2 for y in rb)
    return cov / (var_a * var_b) ** 0.5 if var_a and var_b else float("nan")


class LatencyTable:
    """Per-layer latencies (median ms) for one device, thread count and batch size.

    `measure(specs)` times every spec whose key is not yet in the table;
    `predict(specs)` sums the table's entries. Tables save to and load from
    JSON with their setting (device, device name, threads, batch, torch
    version), so a table measured on one machine is not silently used on another:
    check `mismatch(...)` before reusing one.
    """

    def __init__(self, device: str = "cpu", threads: int | None = None, batch: int = 1,
                 warmup: int = 10, repeats: int = 30):
        self.device = str(torch.device(device))
        self.threads = int(threads if threads is not None else torch.get_num_threads())
        self.batch = int(batch)
        self.warmup = int(warmup)
        self.repeats = int(repeats)
        self.torch_version = torch.__version__
        self.device_name = device_name(device)
        self.entries: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __repr__(self) -> str:
        return (f"LatencyTable({len(self)} entries, device={self.device!r} ({self.device_name}), "
                f"threads={self.threads}, batch={self.batch}, torch={self.torch_version})")

    # -- measuring ---------------------------------------------------------------
    def _time(self, spec: LayerSpec) -> float:
        return measure_latency(spec.make(), spec.input_shape, batch=self.batch, threads=self.threads,
                               warmup=self.warmup, repeats=self.repeats, device=self.device).median_ms

    def measure(self, specs: Iterable[LayerSpec], force: bool = False) -> int:
        """Time each spec whose key is missing (every spec when `force`); returns how many were timed."""
        timed = 0
        for spec in specs:
            if force or spec.key not in self.entries:
                self.entries[spec.key] = self._time(spec)
                timed += 1
        return timed

    def measure_archs(self, space: Any, archs: Iterable[Any], **spec_kwargs: Any) -> int:
        """Fill the table with every layer of `archs` (keyword arguments go to `space.layer_specs`)."""
        return sum(self.measure(space.layer_specs(arch, **spec_kwargs)) for arch in archs)

    # -- predicting --------------------------------------------------------------
    def predict(self, specs: Iterable[LayerSpec], measure_missing: bool = True) -> float:
        """Predicted latency in ms: the sum of the specs' entries (missing ones timed first, or KeyError)."""
        specs = list(specs)
        if measure_missing:
            self.measure(specs)
        missing = [s.key for s in specs if s.key not in self.entries]
        if missing:
            raise KeyError(f"latency table has no entry for {missing[:3]}{' ...' if len(missing) > 3 else ''}; "
                           "measure them first or pass measure_missing=True")
        return float(sum(self.entries[s.key] for s in specs))

    def predict_arch(self, space: Any, arch: Any, measure_missing: bool = True, **spec_kwargs: Any) -> float:
        return self.predict(space.layer_specs(arch, **spec_kwargs), measure_missing=measure_missing)

    def prediction_error(self, space: Any, archs: Sequence[Any], input_size: Any = None,
                         **build_overrides: Any) -> dict[str, Any]:
        """Compare predictions with measured end-to-end latency of `space.build(arch)` on a few archs.

        Returns `rows` (arch key, predicted ms, measured ms, relative error),
        `mean_abs_rel_error`, `max_abs_rel_error`, `mean_ratio` (measured /
        predicted, a calibration factor) and `spearman` (rank correlation;
        nan for fewer than 2 archs). End-to-end runs use the table's own
        device, threads, batch, warmup and repeats.
        """
        spec_kwargs = dict(build_overrides) if input_size is None else dict(build_overrides, input_size=input_size)
        rows = []
        for arch in archs:
            specs = space.layer_specs(arch, **spec_kwargs)
            predicted = self.predict(specs)
            model = space.build(arch, **build_overrides)
            measured = measure_latency(model, specs[0].input_shape, batch=self.batch, threads=self.threads,
                                       warmup=self.warmup, repeats=self.repeats, device=self.device).median_ms
            rows.append({"arch": getattr(arch, "key", str(arch)), "predicted_ms": predicted,
                         "measured_ms": measured, "rel_error": (predicted - measured) / measured})
        errors = [abs(r["rel_error"]) for r in rows]
        predicted = [r["predicted_ms"] for r in rows]
        measured = [r["measured_ms"] for r in rows]
        return {"rows": rows,
                "mean_abs_rel_error": sum(errors) / len(errors) if errors else float("nan"),
                "max_abs_rel_error": max(errors, default=float("nan")),
                "mean_ratio": sum(m / p for m, p in zip(measured, predicted)) / len(rows) if rows else float("nan"),
                "spearman": spearman(predicted, measured) if len(rows) > 1 else float("nan")}

    # -- settings ----------------------------------------------------------------
    def setting(self) -> dict[str, Any]:
        return {"device": self.device, "device_name": self.device_name, "threads": self.threads,
                "batch": self.batch, "torch": self.torch_version, "warmup": self.warmup, "repeats": self.repeats}

    def mismatch(self, device: str = "cpu", threads: int | None = None, batch: int = 1) -> list[str]:
        """Ways this table's setting differs from the given one (empty when it applies)."""
        threads = threads if threads is not None else torch.get_num_threads()
        wanted = {"device": str(torch.device(device)), "device_name": device_name(device),
                  "threads": threads, "batch": batch}
        have = self.setting()
        return [f"{k}: table has {have[k]!r}, wanted {v!r}" for k, v in wanted.items() if have[k] != v]

    # -- files -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.setting(), "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table as JSON atomically (a temporary file in the same folder, then `os.replace`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"latency table not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON latency table ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not an archforge latency table (expected format {FORMAT!r})")
        table = cls.__new__(cls)
        table.device, table.device_name = data["device"], data["device_name"]
        table.threads, table.batch = int(data["threads"]), int(data["batch"])
        table.warmup, table.repeats = int(data["warmup"]), int(data["repeats"])
        table.torch_version = data["torch"]
        table.entries = {str(k): float(v) for k, v in data["entries"].items()}
        return table
