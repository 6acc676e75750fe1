"""Remote sensing: ResNet18-DGConv vs the same network with plain convolutions vs FGConv (multi-stream), and a
sample-based search, on the generated multi-source scene.

One run, one recipe for every network (configs/remote_sensing/search_evolution.yaml, which inherits
embedded_resnet18.yaml: 100 training pixels per class redrawn per seed, 11x11 patches, class-weighted
cross-entropy, SGD 0.02 with steps x0.1 at 2/3 and 5/6 of the epochs (the official 200 and 240 of 300), 120
epochs, batch 48, no weight decay, Kaiming init):

1. the hand-set ResNet18 (widths 16, 32, 64, 128: a quarter of the paper's) with DGConv, plain and FGConv
   convolutions, trained and tested on each replicate seed (42-46), the same seeds and pixels for all;
   OA, AA and kappa on the labelled test pixels, mean ± std;
2. the derived static DGConv network (`core.ops.to_static`): params, MACs, measured latency next to the
   masked training network, its largest output difference and its ONNX export checked in onnxruntime;
3. regularized evolution through the task (`rs_train` evaluator: 8 epochs per candidate, validation OA)
   over conv kind, stage widths and depths and static groups under a MACs limit, then the best arch
   trained with the full recipe on the same seeds, against the hand-set DGConv network.

    python benchmarks/remote_sensing.py                 # defaults below (about 25-30 min on one idle core)
    python benchmarks/remote_sensing.py --quick         # 2 seeds, 4 epochs, a 4-candidate search: a smoke run

Prints the tables; `--json PATH` also writes every row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "remote_sensing" / "search_evolution.yaml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    p.add_argument("--epochs", type=int, default=120)
    p.add_argument("--width", type=int, default=16, help="first-stage width (the paper's 64)")
    p.add_argument("--search-budget", type=int, default=16, help="evaluated candidates")
    p.add_argument("--search-epochs", type=int, default=8)
    p.add_argument("--macs-limit", type=float, default=1.6e6)
    p.add_argument("--models", nargs="+", default=["dgconv", "plain", "fgconv"], choices=["dgconv", "plain", "fgconv"])
    p.add_argument("--no-search", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="2 seeds, 4 epochs, budget 4 x 2 epochs")
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.search_budget, args.search_epochs = args.seeds[:2], 4, 4, 2
    return args


def overrides(args) -> list[str]:
    steps = [max(1, round(args.epochs * 2 / 3)), max(1, round(args.epochs * 5 / 6))]
    return [f"train.epochs={args.epochs}", f"remote_sensing.lr_milestones=[{steps[0]},{steps[1]}]",
            f"space.width={args.width}", f"evaluator.epochs={args.search_epochs}",
            f"search.budget={args.search_budget}", f"objective.constraints=[macs<={args.macs_limit:g}]"]


def fastest(net, input_shape, batch: int, threads: int, rounds: int = 3, repeats: int = 30) -> float:
    """The lowest of `rounds` median latencies (ms) in PyTorch: a shared machine's load only ever adds time."""
    from core.cost import measure_latency

    return min(measure_latency(net, input_shape, batch, threads, warmup=3, repeats=repeats).median_ms
               for _ in range(rounds))


def onnx_latency(path: Path, input_shape, batch: int, threads: int, rounds: int = 3, repeats: int = 30) -> float:
    """The same in onnxruntime (CPU provider, `threads` intra-op threads) for an exported model."""
    import statistics

    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(size=(batch, *input_shape)).astype(np.float32)
    for _ in range(3):
        session.run(None, {"input": x})
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            session.run(None, {"input": x})
            times.append(time.perf_counter() - t)
        medians.append(1000 * statistics.median(times))
    return min(medians)


def cost_rows(models: dict, data, threads: int) -> list[dict]:
    """Params, MACs and latency (batch 1 and a 512-patch batch; PyTorch and onnxruntime) of each network, masked
    and derived static; for the static ones the largest output difference on 256 test patches (float32, and in
    float64, where only the order of the additions differs) and the onnxruntime export check."""
    import copy

    from core.cost import count_macs, count_params
    from core.engine.export import export_onnx
    from core.ops.static_groups import to_static

    rows = []
    input_shape = data.input_shape
    example = torch.zeros(1, *input_shape)
    probe = torch.stack([data.test[i][0] for i in range(0, len(data.test), max(1, len(data.test) // 256))][:256])
    for label, model in models.items():
        model.eval()
        variants = [(label, model)]
        if label in ("dgconv", "fgconv"):
            variants.append((f"{label} static", to_static(model).eval()))
        for name, net in variants:
            row = {"network": name, "params": count_params(net), "macs": count_macs(net, example),
                   "torch_ms": fastest(net, input_shape, 1, threads),
                   "torch512_ms": fastest(net, input_shape, 512, threads, repeats=5)}
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                if name.endswith("static") or label in ("plain", "searched"):
                    diff = export_onnx(net, example, path)
                    row["ort_ms"] = onnx_latency(path, input_shape, 1, threads)
                    row["ort512_ms"] = onnx_latency(path, input_shape, 512, threads, repeats=5)
                    if name.endswith("static"):
                        row["onnx_diff"] = diff
            if name.endswith("static"):
                with torch.no_grad():
                    row["max_diff"] = float((net(probe) - model(probe)).abs().max())
                    row["max_diff_f64"] = float((copy.deepcopy(net).double()(probe.double())
                                                 - copy.deepcopy(model).double()(probe.double())).abs().max())
            rows.append(row)
    return rows


def search(cfg, threads: int, log) -> tuple:
    """Regularized evolution through the task; returns (best arch, summary)."""
    from core.pipeline import load_task
    from core.engine.registry import STRATEGIES
    from core.engine.runs import seed_everything
    from core.journal import Journal
    from core.objective import Objective
    from core.search import Search

    seed_everything(cfg["seed"])
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    objective = Objective.from_config(**cfg["objective"])
    strategy = STRATEGIES.build(cfg["strategy"], "strategy", space=space, seed=cfg["seed"], objective=objective)
    evaluator = task.evaluator(space, data)
    evaluator.threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite", durability="process")
        try:
            summary = Search(space, strategy, evaluator, objective, journal, budget=cfg["search"]["budget"],
                             progress=False).run()
        finally:
            journal.close()
    log(f"search: {summary.evaluations} candidates trained, {summary.infeasible} rejected over the MACs limit "
        f"before training, {summary.seconds:.0f} s")
    return summary.best_arch, summary, space


def describe(arch) -> str:
    widths = "/".join(str(arch[f"stage{i}.width"]) for i in range(1, 5))
    blocks = "/".join(str(arch[f"stage{i}.blocks"]) for i in range(1, 5))
    text = f"{arch['conv']} w{widths} b{blocks}"
    if arch["conv"] == "plain":
        text += " g" + "/".join(str(arch[f"stage{i}.groups"]) for i in range(1, 5))
    return text


def main(argv=None) -> int:
    from core.engine.config import load_config
    from core.engine.report import table
    from core.ops.static_groups import group_report
    from tasks.remote_sensing.metrics import summarize
    from tasks.remote_sensing.replicates import run_one, summarize_rows

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, overrides(args))
    log = lambda s: print(s, flush=True)  # noqa: E731
    start = time.perf_counter()
    log(f"recipe: {args.config} with {' '.join(overrides(args))}; seeds {args.seeds}; {args.threads} thread(s)")

    rows, first_models, groups = [], {}, []
    for seed in args.seeds:
        for name in args.models:
            row, model, data = run_one(cfg, name, seed, None, progress=False, outputs=False)
            rows.append(row)
            first_models.setdefault(name, model)
            if name == "dgconv":
                groups.append([r["blocks"] for r in group_report(model) if r["kind"] == "DGConv2d"])
            log(f"  {name:<7} seed {seed}: OA {100 * row['oa']:.2f}  AA {100 * row['aa']:.2f}  "
                f"kappa {row['kappa']:.4f}  static params {row['static_params']:.0f}  ({row['seconds']:.0f} s)")
    layer_names = ([r["layer"] for r in group_report(first_models["dgconv"]) if r["kind"] == "DGConv2d"]
                   if "dgconv" in first_models else [])

    searched_rows, search_info = [], {}
    if not args.no_search:
        best, summary, space = search(cfg, args.threads, log)
        search_info = {"best_arch": dict(best), "best_val": summary.best_result.metrics,
                       "evaluations": summary.evaluations, "infeasible": summary.infeasible,
                       "seconds": summary.seconds}
        for seed in args.seeds:
            row, model, _ = run_one(cfg, ("searched", best), seed, None, progress=False, outputs=False)
            searched_rows.append(row)
            first_models.setdefault("searched", model)
            log(f"  searched seed {seed}: OA {100 * row['oa']:.2f}  AA {100 * row['aa']:.2f}  "
                f"kappa {row['kappa']:.4f}  ({row['seconds']:.0f} s)")

    costs = cost_rows(first_models, data, args.threads)
    summary_rows = summarize_rows(rows + searched_rows)
    per_replicate = [{"model": r["model"], "seed": r["seed"], "oa": 100 * r["oa"], "aa": 100 * r["aa"],
                      "kappa": 100 * r["kappa"], "static_params": r["static_params"],
                      "static_macs": r["static_macs"]} for r in rows + searched_rows]

    log("\nPer replicate (OA, AA, kappa x 100 on the labelled test pixels):")
    log(table(per_replicate, ["model", "seed", "oa", "aa", "kappa", "static_params", "static_macs"]))
    log("\nMean ± std over the replicates (params/MACs: as trained, and the derived static network, mean):")
    log(table(summary_rows, ["model", "runs", "params", "static_params", "macs", "static_macs", "oa", "aa", "kappa"]))
    log(f"\nCosts of the first replicate's networks ({args.threads} thread(s); latency in ms at batch 1 and 512 "
        "patches, PyTorch and onnxruntime; max_diff: static vs masked outputs on 256 test patches):")
    log(table(costs, ["network", "params", "macs", "torch_ms", "torch512_ms", "ort_ms", "ort512_ms", "max_diff",
                      "max_diff_f64", "onnx_diff"]))
    if groups:
        mean_groups = [summarize([g[i] for g in groups])[0] for i in range(len(layer_names))]
        log("\nLearned groups per DGConv layer (blocks of U), mean over the replicates:")
        log(table([{"layer": n, "groups": g, "per_replicate": " ".join(str(x[i]) for x in groups)}
                   for i, (n, g) in enumerate(zip(layer_names, mean_groups))], ["layer", "groups", "per_replicate"]))

    stats = {r["model"]: r for r in summary_rows}
    dg = stats.get("dgconv")
    if dg is not None:
        log("\nTargets (the paper's findings):")
        for other, label in (("plain", "plain"), ("fgconv", "FGConv")):
            if other in stats:
                o = stats[other]
                log(f"  DGConv mean OA >= {label + ':':<7} {dg['oa_mean'] >= o['oa_mean']}  "
                    f"({100 * dg['oa_mean']:.2f} vs {100 * o['oa_mean']:.2f})")
        if "plain" in stats:
            log(f"  DGConv OA std < plain:    {dg['oa_std'] < stats['plain']['oa_std']}  "
                f"({100 * dg['oa_std']:.2f} vs {100 * stats['plain']['oa_std']:.2f})")
    if search_info and dg is not None:
        sr = stats["searched"]
        log(f"\nSearch: best {describe(best)}, validation OA {100 * search_info['best_val']['oa']:.2f} after "
            f"{args.search_epochs} epochs; {search_info['evaluations']} trained, {search_info['seconds']:.0f} s")
        log(f"  searched:        OA {sr['oa']}  params {sr['static_params']:.0f}  MACs {sr['static_macs']:.0f}")
        log(f"  hand-set DGConv: OA {dg['oa']}  params {dg['static_params']:.0f}  MACs {dg['static_macs']:.0f} "
            f"(derived static; {dg['macs']:.0f} MACs as trained)")
    log(f"\ntotal {time.perf_counter() - start:.0f} s wall, {time.process_time():.0f} s CPU")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "searched": searched_rows,
                                               "summary": summary_rows, "costs": costs, "groups": groups,
                                               "layers": layer_names, "search": search_info}, indent=2,
                                              default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
