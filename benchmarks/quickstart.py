"""Searched vs. hand-designed accuracy at equal MACs, over seeds: the quickstart, repeated.

For each seed, runs `archforge search configs/classification/quickstart.yaml seed=S`
(evolution under `macs <= 600000`, then the best arch, a MobileNetV2-style
baseline sized to the same MACs budget and the full MobileNetV2-style
baseline are trained with the same recipe and tested), then prints
per-model test accuracy (mean and per seed), params and MACs.

    python benchmarks/quickstart.py [--seeds 0 1 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.cli import main as archforge  # noqa: E402
from core.engine.report import table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--config", default=str(ROOT / "configs/classification/quickstart.yaml"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    per_model: dict[str, list[dict]] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            code = archforge(["search", args.config, f"seed={seed}", f"run.dir={tmp}",
                              "retrain.baselines=[mobilenetv2_budget,mobilenetv2]", *args.overrides, "--no-progress"])
            if code != 0:
                raise SystemExit(f"seed {seed}: archforge search exited {code}")
            metrics = sorted(Path(tmp).glob("*/*-search/metrics.json"), key=lambda p: p.stat().st_mtime)[-1]
            for row in json.loads(metrics.read_text()):
                per_model.setdefault(row["model"], []).append(row)
    rows = []
    searched = statistics.mean(r["accuracy"] for r in per_model["searched"])
    for model, runs in per_model.items():
        acc = [r["accuracy"] for r in runs]
        rows.append({"model": model, "test_acc_mean": statistics.mean(acc),
                     "per_seed": " ".join(f"{a:.4f}" for a in acc),
                     "params_mean": statistics.mean(r["params"] for r in runs),
                     "macs_mean": statistics.mean(r["macs"] for r in runs),
                     "latency_ms_mean": statistics.mean(r["latency_ms"] for r in runs),
                     "searched_minus_this": searched - statistics.mean(acc)})
    print(f"\nseeds {args.seeds}, {time.perf_counter() - start:.0f} s in all")
    print(table(rows, ["model", "test_acc_mean", "per_seed", "params_mean", "macs_mean", "latency_ms_mean",
                       "searched_minus_this"]))


if __name__ == "__main__":
    main()
