"""Replicates: train and test several networks over several seeds; a per-replicate table and mean ± std.

The paper's protocol reports 5 replicates (seeds 42-46); for MUUFL each seed
redraws the 100 training pixels per class. Every network gets the same seeds,
data and recipe (the config's `train` section).

    python -m tasks.remote_sensing.replicates configs/remote_sensing/embedded_resnet18.yaml
    python -m tasks.remote_sensing.replicates configs/remote_sensing/muufl.yaml data.root=/data/muufl \\
        --models dgconv plain fgconv runs/.../best_arch.json --seeds 42 43 44 45 46

Networks are baseline names (`dgconv`, `plain`, `fgconv`: the hand-set
network of the config's space) or arch JSON files. Writes, under
`runs/<config>/<time>-replicates/`: `per_replicate.csv`, `summary.csv`,
`summary.json`, and per network and seed the test outputs (class map GeoTIFF
and PNG, confusion matrix, learned groups, checkpoint) unless `--no-outputs`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.engine.registry import ConfigError

TABLE = ["model", "seed", "params", "static_params", "macs", "static_macs", "oa", "aa", "kappa", "seconds"]
SUMMARY = ["model", "runs", "params", "static_params", "macs", "static_macs", "oa", "aa", "kappa"]


def resolve_arch(name, task, space, data):
    """A baseline name, an arch JSON file or a (label, Arch) pair, with its label."""
    from core.api import Arch

    if isinstance(name, tuple):
        label, arch = name
        return space.check(arch if isinstance(arch, Arch) else Arch(arch)), label
    if name.endswith(".json"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--models: arch file not found: {path}")
        return space.check(Arch.from_json(path.read_text())), path.stem
    return task.baseline(name, space, data), name


def run_one(cfg: dict[str, Any], name, seed: int, out_dir: Path | None, progress: bool = False,
            outputs: bool = True) -> tuple[dict[str, Any], Any, Any]:
    """Train and test one network for one seed; returns its table row, the trained model and the data."""
    from core.pipeline import load_task, save_model
    from core.cost import count_macs, count_params
    from core.engine.runs import seed_everything
    from core.ops.dgconv import DGConv2d, FGConv2d
    from tasks.remote_sensing.task import RemoteSensingTask

    start = time.perf_counter()
    cfg = dict(cfg, seed=int(seed))
    seed_everything(seed)
    task = load_task(cfg)
    if not isinstance(task, RemoteSensingTask):
        raise ConfigError(f"task: replicates run the remote_sensing task, not {cfg.get('task')!r}")
    data = task.data()
    space = task.space(data)
    arch, label = resolve_arch(name, task, space, data)
    seed_everything(seed)
    model = space.build(arch, num_classes=data.num_classes)
    example = task.example_input(data)
    row = {"model": label, "seed": seed, "arch": arch.key, "params": float(count_params(model)),
           "macs": float(count_macs(model, example))}
    if out_dir is not None:
        run_dir = out_dir / label / f"seed{seed}"
        task.train(model, data, run_dir, progress)
    else:  # Lightning's logs and checkpoints go to a folder that is removed afterwards
        with tempfile.TemporaryDirectory(prefix="rs-replicate-") as scratch:
            task.train(model, data, Path(scratch), progress)
    if outputs and out_dir is not None:
        metrics = task.test(model, data, run_dir)
        save_model(run_dir / "model.pt", cfg, arch, model, metrics)
    else:
        metrics = task.score(model, task.loader(data.test, cfg["test"]["batch_size"]))
        if any(isinstance(m, (DGConv2d, FGConv2d)) for m in model.modules()):
            metrics.update(task.static_summary(model, data, None))
    row.update({k: v for k, v in metrics.items() if k in ("oa", "aa", "kappa", "static_params", "static_macs",
                                                          "static_max_diff")})
    row.setdefault("static_params", row["params"])
    row.setdefault("static_macs", row["macs"])
    row["seconds"] = time.perf_counter() - start
    return row, model, data


def summarize_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per network: costs (their mean over seeds: DGConv's static ones change with the learned gates) and
    OA, AA, kappa as 'mean ± std' in percent (kappa x 100)."""
    from tasks.remote_sensing.metrics import mean_std, summarize

    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        entry = {"model": model, "runs": len(mine)}
        for key in ("params", "static_params", "macs", "static_macs"):
            entry[key] = summarize([r[key] for r in mine])[0]
        for key in ("oa", "aa", "kappa"):
            entry[key] = mean_std([r[key] for r in mine])
            entry[f"{key}_mean"], entry[f"{key}_std"] = summarize([r[key] for r in mine])
        out.append(entry)
    return out


def run_replicates(cfg: dict[str, Any], models: Sequence, seeds: Sequence[int], out_dir: Path | None,
                   progress: bool = False, outputs: bool = True,
                   log: Callable[[str], None] = print) -> tuple[list[dict], list[dict]]:
    """Every network for every seed; returns (per-replicate rows, summary rows) and writes the tables."""
    from core.engine.report import table, write_csv
    from core.engine.runs import write_json

    rows = []
    for seed in seeds:
        for name in models:
            row = run_one(cfg, name, seed, out_dir, progress, outputs)[0]
            rows.append(row)
            log(f"  {row['model']:<12} seed {seed}: OA {100 * row['oa']:.2f}  AA {100 * row['aa']:.2f}  "
                f"kappa {row['kappa']:.4f}  ({row['seconds']:.0f} s)")
    summary = summarize_rows(rows)
    if out_dir is not None:
        write_csv(out_dir / "per_replicate.csv", rows, TABLE + ["arch"])
        write_csv(out_dir / "summary.csv", summary, SUMMARY)
        write_json(out_dir / "summary.json", {"rows": rows, "summary": summary})
    log("\n" + table(rows, TABLE))
    log("\n" + table(summary, SUMMARY))
    return rows, summary


def main(argv: list[str] | None = None) -> int:
    from core.engine.config import dump_config, load_config
    from core.engine.runs import make_run_dir

    parser = argparse.ArgumentParser(prog="python -m tasks.remote_sensing.replicates", description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    parser.add_argument("--models", nargs="+", default=["dgconv", "plain", "fgconv"],
                        help="baseline names (dgconv, plain, fgconv) or arch JSON files")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: remote_sensing.replicates of the config")
    parser.add_argument("--no-outputs", action="store_true", help="only the tables (no maps, plots, checkpoints)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = not args.no_progress and not os.environ.get("ARCHFORGE_NO_PROGRESS")
    try:
        cfg = load_config(args.config, args.overrides)
        seeds = args.seeds or (cfg.get("remote_sensing") or {}).get("replicates") or [42, 43, 44, 45, 46]
        out_dir = make_run_dir(cfg, "replicates")
        dump_config(cfg, out_dir / "config.yaml")
        print(f"replicates: {', '.join(args.models)} x seeds {', '.join(map(str, seeds))} -> {out_dir}", flush=True)
        run_replicates(cfg, args.models, seeds, out_dir, progress, outputs=not args.no_outputs)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if os.environ.get("ARCHFORGE_DEBUG"):
            raise
        print(f"replicates: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
