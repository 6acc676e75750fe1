"""Build the shipped tabular benchmark: train every arch of the `cell201` space on digits.

    python tools/build_tabular_benchmark.py                       # full build, resumes a previous one
    python tools/build_tabular_benchmark.py --limit 6 --work-dir /tmp/t   # time a few archs (no table)
    python tools/build_tabular_benchmark.py --summary             # distribution of the shipped table

NAS-Bench-201 (Dong & Yang, ICLR 2020) style: every cell of the space is
trained with one fixed recipe, once per seed (`--seeds`, default 0 to 3),
and its validation and test accuracy recorded after every epoch, with
params, MACs and training CPU time. Each run goes as one JSON line into its
seed's work file (`--work-dir`) as soon as it finishes; a restart skips the
runs already there, so a killed build loses at most the runs in flight. When
every run is done, the compact table (gzipped JSON, read by
`core.evaluation.tabular.TabularEvaluator`: curves averaged over the seeds,
plus the per-seed accuracy curves) is written atomically to `--out`.

A seed fixes the initialisation, the batch order and the training subset
(`--train-fraction` of the train split); every arch gets the same ones. The
cosine schedule always spans the full `--epochs`, so the accuracy after
epoch e < E is the intermediate of the full run (as in NAS-Bench-201's
per-epoch records), not a run trained for e epochs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# replace tools/ (first on the path when run as a script): tools/profile.py would shadow the stdlib `profile`
sys.path[0] = str(ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from core.cost import count_macs, count_params  # noqa: E402
from core.zoo.cell201 import Cell201Space, from_str, to_str  # noqa: E402
from tasks.classification.data import digits  # noqa: E402

DEFAULT_OUT = ROOT / "core" / "data" / "cell201_digits.json.gz"
DEFAULT_WORK_DIR = ROOT / "runs" / "tabular"
FORMAT = "archforge-tabular/1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--C", type=int, default=8, help="channels of the first stage")
    p.add_argument("--N", type=int, default=1, help="cells per stage")
    p.add_argument("--train-fraction", type=float, default=0.2, help="fraction of the train split used")
    p.add_argument("--eval-split", choices=("val", "val+heldout"), default="val+heldout",
                   help="what the validation accuracy is measured on: the val split alone, or the val split plus "
                        "the train images a seed's training subset left out (finer accuracies, fewer ties)")
    p.add_argument("--seeds", default="0,1,2,3", help="comma-separated training seeds; the table holds their mean")
    p.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    p.add_argument("--limit", type=int, default=None, help="train only this many archs (timing); no table")
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                   help="where the resumable JSONL work files (one per seed) go")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the shipped table (.json.gz)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary", action="store_true", help="only print the accuracy distribution of --out")
    args = p.parse_args(argv)
    try:
        args.seeds = sorted({int(x) for x in args.seeds.split(",") if x.strip()})
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not args.seeds:
        p.error("--seeds: give at least one seed")
    return args


def recipe_of(args: argparse.Namespace, seed: int) -> dict:
    """Everything that changes the numbers; a work file written with another recipe is refused."""
    return {"dataset": "digits", "split_seed": 0, "space": "cell201",
            "space_config": Cell201Space(C=args.C, N=args.N).config(),
            "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "SGD nesterov",
            "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
            "schedule": "cosine over all steps, no warm-up", "grad_clip": 5.0,
            "train_fraction": args.train_fraction, "eval_split": args.eval_split, "seed": seed, "torch_threads_per_worker": 1,
            "timing": "CPU seconds of training (time.process_time), evaluation excluded"}


# -- one arch (runs in a worker) -----------------------------------------------

_STATE: dict = {}


def _init_worker(recipes: dict[int, dict]) -> None:
    """Load the data once per worker; each seed has its own training subset."""
    torch.set_num_threads(1)
    any_recipe = next(iter(recipes.values()))
    data = digits(seed=any_recipe["split_seed"])
    _STATE.update(data=data, recipes=recipes, train={},
                  val=[(x, y) for x, y in DataLoader(data.val, batch_size=512)],
                  test=[(x, y) for x, y in DataLoader(data.test, batch_size=512)])
    _STATE["val_by_seed"] = {}
    for seed, recipe in recipes.items():
        train, heldout = data.train, []
        if recipe["train_fraction"] < 1:
            g = torch.Generator().manual_seed(seed)
            n = max(1, round(len(train) * recipe["train_fraction"]))
            order = torch.randperm(len(train), generator=g).tolist()
            train, heldout = Subset(data.train, order[:n]), order[n:]
        _STATE["train"][seed] = train
        val = _STATE["val"]
        if recipe.get("eval_split") == "val+heldout" and heldout:
            val = val + [(x, y) for x, y in DataLoader(Subset(data.train, heldout), batch_size=512)]
        _STATE["val_by_seed"][seed] = val
    cfg = any_recipe["space_config"]
    _STATE["space"] = Cell201Space(C=cfg["C"], N=cfg["N"], num_classes=cfg["num_classes"],
                                   in_channels=cfg["in_channels"], ops=cfg["ops"])


@torch.no_grad()
def _accuracy_and_loss(model: torch.nn.Module, batches) -> tuple[float, float]:
    model.eval()
    correct, loss = 0, 0.0
    for x, y in batches:
        logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
    n = sum(len(y) for _, y in batches)
    return correct / n, loss / n


def train_arch(task: tuple[str, int]) -> tuple[int, dict]:
    """Train one arch with one seed (init, batch order and training subset); per-epoch val/test accuracy,
    train loss and cumulative training CPU seconds."""
    arch_str, seed = task
    recipe, space = _STATE["recipes"][seed], _STATE["space"]
    arch = from_str(arch_str)
    torch.manual_seed(seed)
    model = space.build(arch)
    x0 = torch.zeros(1, *_STATE["data"].input_shape)
    params, macs = count_params(model), count_macs(model, x0)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(_STATE["train"][seed], batch_size=recipe["batch_size"], shuffle=True, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                          weight_decay=recipe["weight_decay"], nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe["epochs"] * len(loader))
    val, val_loss, test, losses, seconds = [], [], [], [], []
    elapsed = 0.0
    for _ in range(recipe["epochs"]):
        start = time.process_time()  # CPU seconds of this single-threaded worker: immune to other load
        model.train()
        total, n = 0.0, 0
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(y), n + len(y)
        elapsed += time.process_time() - start
        loss = total / n
        losses.append(round(loss, 5) if math.isfinite(loss) else None)
        seconds.append(round(elapsed, 3))
        acc, vloss = _accuracy_and_loss(model, _STATE["val_by_seed"][seed])
        val.append(round(acc, 5))
        val_loss.append(round(vloss, 5) if math.isfinite(vloss) else None)
        test.append(round(_accuracy_and_loss(model, _STATE["test"])[0], 5))
    return seed, {"arch": arch_str, "params": params, "macs": macs, "val_acc": val, "val_loss": val_loss,
                  "test_acc": test,
                  "train_loss": losses, "train_seconds": seconds}


# -- the work file and the table ---------------------------------------------------

def read_work(path: Path, recipe: dict) -> dict[str, dict]:
    """Finished archs of a previous run (a torn last line from a kill is dropped)."""
    if not path.exists():
        return {}
    done: dict[str, dict] = {}
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines:
        return {}
    header = json.loads(lines[0])
    if header.get("recipe") != recipe:
        raise SystemExit(f"{path}: written with another recipe; delete it or use another --work-dir\n"
                         f"  there: {header.get('recipe')}\n  now:   {recipe}")
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[row["arch"]] = row
    return done


def merge_seeds(per_seed: dict[int, dict[str, dict]], archs: list[str]) -> list[dict]:
    """One row per arch: curves averaged over the seeds, and the per-seed accuracy and loss curves."""
    rows = []
    for arch in sorted(archs):
        runs = [per_seed[seed][arch] for seed in sorted(per_seed)]
        if len({(r["params"], r["macs"]) for r in runs}) != 1:
            raise RuntimeError(f"{arch}: params/MACs differ between seeds")
        row = {"arch": arch, "params": runs[0]["params"], "macs": runs[0]["macs"]}
        for col, digits_ in (("val_acc", 5), ("val_loss", 5), ("test_acc", 5), ("train_loss", 5),
                             ("train_seconds", 3)):
            curves = [[math.nan if v is None else v for v in r[col]] for r in runs]
            mean = [sum(vs) / len(vs) for vs in zip(*curves)]
            row[col] = [round(v, digits_) if math.isfinite(v) else None for v in mean]
        row["val_acc_by_seed"] = [r["val_acc"] for r in runs]
        row["val_loss_by_seed"] = [r["val_loss"] for r in runs]
        row["test_acc_by_seed"] = [r["test_acc"] for r in runs]
        rows.append(row)
    return rows


def write_table(path: Path, rows: list[dict], recipe: dict, build: dict) -> None:
    """The shipped table: columns in one gzipped JSON document, written to a temp file then renamed."""
    table = {
        "format": FORMAT,
        "meta": {"benchmark": "cell201 on digits (NAS-Bench-201 style, Dong & Yang, ICLR 2020)",
                 "recipe": recipe, "build": build,
                 "columns": {"val_acc": "top-1 on the validation split after each epoch, mean over the seeds",
                             "val_loss": "cross-entropy on the validation split after each epoch, mean over the seeds",
                             "test_acc": "top-1 on the test split after each epoch, mean over the seeds",
                             "val_acc_by_seed": "[seed][epoch] top-1 on the validation split, seeds as in recipe",
                             "val_loss_by_seed": "[seed][epoch] cross-entropy on the validation split",
                             "test_acc_by_seed": "[seed][epoch] top-1 on the test split, seeds as in recipe",
                             "train_loss": "mean training cross-entropy of each epoch, mean over the seeds",
                             "train_seconds": "cumulative training CPU seconds (1 thread) after each epoch, "
                                              "mean over the seeds",
                             "params": "parameters of the full network", "macs": "MACs on 1x1x8x8"}},
        "archs": [r["arch"] for r in rows],
    }
    for col in ("params", "macs", "val_acc", "val_loss", "test_acc", "train_loss", "train_seconds",
                "val_acc_by_seed", "val_loss_by_seed", "test_acc_by_seed"):
        table[col] = [r[col] for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as f:
        json.dump(table, f, separators=(",", ":"))
    os.replace(tmp, path)


def reproducibility(table: dict, live) -> list[str]:
    """Kendall tau among the connected cells (`live`) between the runs of different seeds, per summary of a run:
    every pair of single seeds, and with >= 4 seeds the mean of the first half of the seeds against the mean of
    the second half (how reproducible the table's ranking is; docs/strategies.md quotes these lines)."""
    import itertools

    import numpy as np
    from scipy.stats import kendalltau

    seeds, half = table["meta"]["recipe"]["seeds"], len(table["meta"]["recipe"]["seeds"]) // 2
    acc = np.array(table["val_acc_by_seed"], dtype=float)[live]  # [arch, seed, epoch]
    summaries = {"final val accuracy": acc[..., -1], "val accuracy, mean of the last 3 epochs": acc[..., -3:].mean(-1),
                 "val accuracy, mean over all epochs": acc.mean(-1)}
    if "val_loss_by_seed" in table:
        summaries["final val loss (negated)"] = -np.array(table["val_loss_by_seed"], dtype=float)[live][..., -1]
    lines = []
    for name, runs in summaries.items():
        pairs = [kendalltau(runs[:, i], runs[:, j])[0] for i, j in itertools.combinations(range(len(seeds)), 2)]
        line = (f"Kendall tau among connected cells, {name}: single-seed pairs "
                f"{' '.join(f'{t:.2f}' for t in pairs)} (mean {np.mean(pairs):.3f})")
        if len(seeds) >= 4:
            first, second = runs[:, :half].mean(1), runs[:, half:].mean(1)
            line += f"; mean of seeds {seeds[:half]} vs mean of {seeds[half:]}: {kendalltau(first, second)[0]:.3f}"
        lines.append(line)
    if "final val loss (negated)" in summaries and len(seeds) >= 4:
        loss = summaries["final val loss (negated)"][:, :half].mean(1)
        lines.append(f"Kendall tau among connected cells, final val loss of seeds {seeds[:half]} vs final val "
                     f"accuracy of seeds {seeds[half:]}: {kendalltau(loss, acc[:, half:, -1].mean(1))[0]:.3f}")
    return lines


def summary(path: Path) -> str:
    """The accuracy distribution of a built table (what docs/strategies.md (the tabular benchmark) quotes)."""
    import numpy as np
    from scipy.stats import kendalltau

    with gzip.open(path, "rt") as f:
        table = json.load(f)
    lines = [f"{path}: {len(table['archs'])} archs, {table['meta']['recipe']['epochs']} epochs, "
             f"{path.stat().st_size / 1e6:.3f} MB; build {table['meta']['build']}"]
    for col in ("val_acc", "test_acc"):
        for epoch in sorted({1, len(table[col][0]) // 2, len(table[col][0])}):
            v = np.array([row[epoch - 1] for row in table[col]])
            top1 = np.sort(v)[::-1][int(np.ceil(0.01 * len(v))) - 1]
            lines.append(f"{col} epoch {epoch:>2}: min {v.min():.4f}  p10 {np.percentile(v, 10):.4f}  "
                         f"median {np.median(v):.4f}  p90 {np.percentile(v, 90):.4f}  max {v.max():.4f}  "
                         f"top-1% threshold {top1:.4f} ({(v >= top1).sum()} archs reach it)  "
                         f"(< 0.2: {(v < 0.2).sum()} archs)")
    val, test = np.array(table["val_acc"])[:, -1], np.array(table["test_acc"])[:, -1]
    live = val > 0.2
    lines.append(f"Kendall tau final val vs test: all {kendalltau(val, test)[0]:.3f}, "
                 f"connected cells {kendalltau(val[live], test[live])[0]:.3f}; "
                 f"{len({tuple(r) for r in table['val_acc']})} distinct val curves")
    loss = np.array(table["val_loss"], dtype=float)[:, -1]
    top1 = np.sort(loss)[int(np.ceil(0.01 * len(loss))) - 1]
    lines.append(f"val_loss epoch {len(table['val_loss'][0]):>2}: min {loss.min():.4f}  median {np.median(loss):.4f}  "
                 f"max {loss.max():.4f}  top-1% threshold {top1:.4f} ({(loss <= top1).sum()} archs reach it; "
                 f"their val accuracy {val[loss <= top1].min():.4f}-{val[loss <= top1].max():.4f})")
    lines += reproducibility(table, live)
    for col in ("params", "macs"):
        v = np.array(table[col])
        lines.append(f"{col}: min {v.min():.0f}  median {np.median(v):.0f}  max {v.max():.0f}")
    secs = np.array([row[-1] for row in table["train_seconds"]])
    lines.append(f"train CPU seconds per arch and seed: min {secs.min():.2f}  median {np.median(secs):.2f}  "
                 f"max {secs.max():.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summary:
        print(summary(args.out))
        return 0
    recipes = {seed: recipe_of(args, seed) for seed in args.seeds}
    space = Cell201Space(C=args.C, N=args.N)
    archs = [to_str(a) for a in space.all_archs()]
    random.Random(0).shuffle(archs)  # a partial work file is a uniform sample
    if args.limit is not None:
        archs = archs[:args.limit]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    paths = {seed: args.work_dir / f"cell201_digits.seed{seed}.work.jsonl" for seed in args.seeds}
    done = {seed: read_work(paths[seed], recipes[seed]) for seed in args.seeds}
    todo = [(a, seed) for seed in args.seeds for a in archs if a not in done[seed]]
    total = len(archs) * len(args.seeds)
    print(f"cell201 x digits: {len(archs)} archs x seeds {args.seeds}: {total - len(todo)} runs done in "
          f"{args.work_dir}, {len(todo)} to train with {args.workers} workers")
    print(f"recipe: {json.dumps({k: v for k, v in recipes[args.seeds[0]].items() if k != 'space_config'})}")
    clock = args.work_dir / "cell201_digits.wall_seconds.json"  # build wall time summed over the tool's runs
    spent = json.loads(clock.read_text()) if clock.exists() else {}
    start = time.time()
    files = {}
    try:
        for seed, path in paths.items():
            new_file = not path.exists() or path.stat().st_size == 0
            files[seed] = open(path, "a")
            if new_file:
                files[seed].write(json.dumps({"recipe": recipes[seed]}) + "\n")
        bar = tqdm(total=total, initial=total - len(todo), unit="run", desc="train",
                   disable=args.no_progress or bool(os.environ.get("ARCHFORGE_NO_PROGRESS")), dynamic_ncols=True)
        with mp.get_context("fork").Pool(args.workers, _init_worker, (recipes,)) as pool:
            for seed, row in pool.imap_unordered(train_arch, todo):
                work = files[seed]
                work.write(json.dumps(row, separators=(",", ":")) + "\n")
                work.flush()
                os.fsync(work.fileno())
                done[seed][row["arch"]] = row
                bar.update(1)
                bar.set_postfix(val=f"{row['val_acc'][-1]:.3f}", s=f"{row['train_seconds'][-1]:.1f}")
        bar.close()
    finally:
        for f in files.values():
            f.close()
        wall = time.time() - start
        if todo:
            spent[str(len(spent))] = round(wall, 1)
            clock.write_text(json.dumps(spent))
    print(f"trained {len(todo)} runs in {wall:.0f} s wall")
    if args.limit is not None:
        print("--limit given: no table written")
        return 0
    rows = merge_seeds(done, archs)
    recipe = {k: v for k, v in recipes[args.seeds[0]].items() if k != "seed"}
    recipe["seeds"] = args.seeds
    build = {"archs": len(rows), "seeds": args.seeds, "wall_seconds": round(sum(spent.values()), 1),
             "wall_seconds_by_session": list(spent.values()),
             "train_seconds_total": round(sum(r["train_seconds"][-1] for r in rows) * len(args.seeds), 1),
             "workers": args.workers, "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    write_table(args.out, rows, recipe, build)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.3f} MB, {len(rows)} archs)")
    print(summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
