"""Build the shipped tabular benchmark: train every arch of the `cell201` space on digits.

    python tools/build_tabular_benchmark.py                 # full build, resumes a previous one
    python tools/build_tabular_benchmark.py --limit 6       # time a few archs first (nothing shipped)

NAS-Bench-201 (Dong & Yang, ICLR 2020) style: every cell of the space is
trained with one fixed recipe and its validation and test accuracy recorded
after every epoch, with params, MACs and training time. Results go one JSON
line per arch into a work file (`--work`) as soon as an arch finishes; a
restart skips the archs already there, so a killed build loses at most the
archs in flight. When every arch is done, the compact table (gzipped JSON,
read by `core.evaluation.tabular.TabularEvaluator`) is written atomically to
`--out`.

Every arch gets the same seed: the same initialisation stream and the same
batch order. The cosine schedule always spans the full `--epochs`, so the
accuracy after epoch e < E is the intermediate of the full run (as in
NAS-Bench-201's per-epoch records), not a run trained for e epochs.
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
from core.spaces.cell201 import Cell201Space, from_str, to_str  # noqa: E402
from tasks.classification.data import digits  # noqa: E402

DEFAULT_OUT = ROOT / "core" / "data" / "cell201_digits.json.gz"
DEFAULT_WORK = ROOT / "runs" / "tabular" / "cell201_digits.work.jsonl"
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
    p.add_argument("--train-fraction", type=float, default=0.5, help="fraction of the train split used")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    p.add_argument("--limit", type=int, default=None, help="train only this many archs (timing); no table")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="resumable JSONL of finished archs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the shipped table (.json.gz)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary", action="store_true", help="only print the accuracy distribution of --out")
    return p.parse_args(argv)


def recipe_of(args: argparse.Namespace) -> dict:
    """Everything that changes the numbers; a work file written with another recipe is refused."""
    return {"dataset": "digits", "split_seed": 0, "space": "cell201",
            "space_config": Cell201Space(C=args.C, N=args.N).config(),
            "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": "SGD nesterov",
            "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
            "schedule": "cosine over all steps, no warm-up", "grad_clip": 5.0,
            "train_fraction": args.train_fraction, "seed": args.seed, "torch_threads_per_worker": 1,
            "timing": "CPU seconds of training (time.process_time), evaluation excluded"}


# -- one arch (runs in a worker) -----------------------------------------------

_STATE: dict = {}


def _init_worker(recipe: dict) -> None:
    torch.set_num_threads(1)
    data = digits(seed=recipe["split_seed"])
    train = data.train
    if recipe["train_fraction"] < 1:
        g = torch.Generator().manual_seed(recipe["seed"])
        n = max(1, round(len(train) * recipe["train_fraction"]))
        train = Subset(train, torch.randperm(len(train), generator=g)[:n].tolist())
    cfg = recipe["space_config"]
    _STATE.update(recipe=recipe, data=data, train=train,
                  space=Cell201Space(C=cfg["C"], N=cfg["N"], num_classes=cfg["num_classes"],
                                     in_channels=cfg["in_channels"], ops=cfg["ops"]),
                  val=[(x, y) for x, y in DataLoader(data.val, batch_size=512)],
                  test=[(x, y) for x, y in DataLoader(data.test, batch_size=512)])


@torch.no_grad()
def _accuracy(model: torch.nn.Module, batches) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return correct / sum(len(y) for _, y in batches)


def train_arch(arch_str: str) -> dict:
    """Train one arch with the recipe; per-epoch val/test accuracy, train loss and cumulative seconds."""
    recipe, space = _STATE["recipe"], _STATE["space"]
    arch = from_str(arch_str)
    torch.manual_seed(recipe["seed"])
    model = space.build(arch)
    x0 = torch.zeros(1, *_STATE["data"].input_shape)
    params, macs = count_params(model), count_macs(model, x0)
    g = torch.Generator().manual_seed(recipe["seed"])
    loader = DataLoader(_STATE["train"], batch_size=recipe["batch_size"], shuffle=True, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                          weight_decay=recipe["weight_decay"], nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe["epochs"] * len(loader))
    val, test, losses, seconds = [], [], [], []
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
        val.append(round(_accuracy(model, _STATE["val"]), 5))
        test.append(round(_accuracy(model, _STATE["test"]), 5))
    return {"arch": arch_str, "params": params, "macs": macs, "val_acc": val, "test_acc": test,
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
        raise SystemExit(f"{path}: written with another recipe; delete it or use --work OTHER.jsonl\n"
                         f"  there: {header.get('recipe')}\n  now:   {recipe}")
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[row["arch"]] = row
    return done


def write_table(path: Path, rows: list[dict], recipe: dict, build: dict) -> None:
    """The shipped table: columns in one gzipped JSON document, written to a temp file then renamed."""
    rows = sorted(rows, key=lambda r: r["arch"])
    table = {
        "format": FORMAT,
        "meta": {"benchmark": "cell201 on digits (NAS-Bench-201 style, Dong & Yang, ICLR 2020)",
                 "recipe": recipe, "build": build,
                 "columns": {"val_acc": "top-1 on the validation split after each epoch",
                             "test_acc": "top-1 on the test split after each epoch",
                             "train_loss": "mean training cross-entropy of each epoch",
                             "train_seconds": "cumulative training CPU seconds (1 thread) after each epoch",
                             "params": "parameters of the full network", "macs": "MACs on 1x1x8x8"}},
        "archs": [r["arch"] for r in rows],
    }
    for col in ("params", "macs", "val_acc", "test_acc", "train_loss", "train_seconds"):
        table[col] = [r[col] for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", compresslevel=9) as f:
        json.dump(table, f, separators=(",", ":"))
    os.replace(tmp, path)


def summary(path: Path) -> str:
    """The accuracy distribution of a built table (what docs/drafts/tabular.md quotes)."""
    import numpy as np

    with gzip.open(path, "rt") as f:
        table = json.load(f)
    lines = [f"{path}: {len(table['archs'])} archs, {table['meta']['recipe']['epochs']} epochs, "
             f"{path.stat().st_size / 1e6:.2f} MB; build {table['meta']['build']}"]
    for col in ("val_acc", "test_acc"):
        for epoch in sorted({1, len(table[col][0]) // 2, len(table[col][0])}):
            v = np.array([row[epoch - 1] for row in table[col]])
            top1 = np.sort(v)[::-1][int(np.ceil(0.01 * len(v))) - 1]
            lines.append(f"{col} epoch {epoch:>2}: min {v.min():.4f}  p10 {np.percentile(v, 10):.4f}  "
                         f"median {np.median(v):.4f}  p90 {np.percentile(v, 90):.4f}  max {v.max():.4f}  "
                         f"top-1% threshold {top1:.4f}  (< 0.2: {(v < 0.2).sum()} archs)")
    for col in ("params", "macs"):
        v = np.array(table[col])
        lines.append(f"{col}: min {v.min():.0f}  median {np.median(v):.0f}  max {v.max():.0f}")
    secs = np.array([row[-1] for row in table["train_seconds"]])
    lines.append(f"train CPU seconds per arch: min {secs.min():.2f}  median {np.median(secs):.2f}  "
                 f"max {secs.max():.2f}  total {secs.sum():.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summary:
        print(summary(args.out))
        return 0
    recipe = recipe_of(args)
    space = Cell201Space(C=args.C, N=args.N)
    archs = [to_str(a) for a in space.all_archs()]
    random.Random(args.seed).shuffle(archs)  # a partial work file is a uniform sample
    if args.limit is not None:
        archs = archs[:args.limit]
    args.work.parent.mkdir(parents=True, exist_ok=True)
    done = read_work(args.work, recipe)
    todo = [a for a in archs if a not in done]
    print(f"cell201 x digits: {len(archs)} archs, {len(archs) - len(todo)} done in {args.work}, "
          f"{len(todo)} to train with {args.workers} workers")
    print(f"recipe: {json.dumps({k: v for k, v in recipe.items() if k != 'space_config'})}")
    start = time.time()
    new_file = not args.work.exists() or args.work.stat().st_size == 0
    with open(args.work, "a") as work:
        if new_file:
            work.write(json.dumps({"recipe": recipe}) + "\n")
        bar = tqdm(total=len(archs), initial=len(archs) - len(todo), unit="arch", desc="train",
                   disable=args.no_progress or bool(os.environ.get("ARCHFORGE_NO_PROGRESS")), dynamic_ncols=True)
        with mp.get_context("fork").Pool(args.workers, _init_worker, (recipe,)) as pool:
            for row in pool.imap_unordered(train_arch, todo):
                work.write(json.dumps(row, separators=(",", ":")) + "\n")
                work.flush()
                os.fsync(work.fileno())
                done[row["arch"]] = row
                bar.update(1)
                bar.set_postfix(val=f"{row['val_acc'][-1]:.3f}", s=f"{row['train_seconds'][-1]:.1f}")
        bar.close()
    wall = time.time() - start
    rows = [done[a] for a in archs]
    secs = sorted(r["train_seconds"][-1] for r in rows)
    print(f"trained {len(todo)} archs in {wall:.0f} s wall; per arch train seconds: median "
          f"{secs[len(secs) // 2]:.2f}, max {secs[-1]:.2f}")
    if args.limit is not None:
        print("--limit given: no table written")
        return 0
    build = {"archs": len(rows), "wall_seconds_this_run": round(wall, 1),
             "train_seconds_total": round(sum(r["train_seconds"][-1] for r in rows), 1),
             "workers": args.workers, "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    write_table(args.out, rows, recipe, build)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(rows)} archs)")
    print(summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
