"""Operators against the baselines they claim to beat, on the generated shapes32 set (one table per sub-command).

    python benchmarks/operators.py data      # small vs larger ResNets: how hard the set is
    python benchmarks/operators.py disout    # none / dropout / DropBlock / Disout on a pre-activation ResNet
    python benchmarks/operators.py qnn       # full precision / binary / widened / widened-and-squeezed binary
    python benchmarks/operators.py epitome   # MobileNetV2-style: plain, plain at equal MACs, epitome tile/fixed/learned

Every row of a table is trained with the same recipe and seeds and tested on
the same test split (`shapes32`: 5,000 train, 1,000 val, 2,000 test images
by default); accuracy is the mean +- sample std over seeds, then each seed.
MACs are multiply-accumulates at 32x32 (torch FlopCounterMode FLOPs / 2).
`--quick` shrinks everything to a smoke run; `--threads` (default 1) sets
torch's CPU threads; `--device cuda` and `--jobs N` (N runs at once, in
separate processes) also halves the wall time on two CPU cores. With
`--jobs 2` on two cores the defaults take about 10 to 45 minutes per
sub-command (qnn, 3 seeds of 60 epochs: 42 minutes).

Recipes (shared by every row of a sub-command):

- data, disout: SGD (momentum 0.9, Nesterov), lr 0.1, weight decay 5e-4,
  batch 64, cosine schedule per step, padded random crops and flips (Disout's
  CIFAR recipe with a cosine schedule in place of the step decay, shortened).
  Disout's `dist_prob 0.09, block_size 6, alpha 5` are the official CIFAR
  ResNet-56 ones; dropout and DropBlock use p = 0.09 (DropBlock block 5:
  torchvision's DropBlock2d takes odd blocks only) and all three the same
  linear ramp over the run, after both convolutions of every block of the
  last stage.
- qnn: Adam, lr 2e-3, no weight decay, batch 64, cosine; the binary networks
  keep the stem, shortcuts and classifier in full precision. The squeezed
  network trains widened for the first 3/4 of the epochs, is squeezed to
  `--keep` of its widened channels (`core.ops.squeeze`, calibrated on 512
  training images) and fine-tuned for the last 1/4 in the same schedule:
  every row has the same number of epochs. Keep the default 60 epochs:
  shapes32 has a plateau of a few epochs at chance, and binary activations
  lengthen it far more (the binary ResNet-8 leaves chance after about 20
  epochs of a 60-epoch schedule; in a 20-epoch schedule it never does).
- epitome: SGD as above with weight decay 4e-5; all 1x1 convs of the
  MobileNetV2-style blocks are epitome convs at multiplier 2; the plain net
  at equal MACs has the same widths and the largest expansion whose MACs do
  not exceed the epitome net's.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.cost import count_macs, count_params  # noqa: E402
from core.engine.report import table  # noqa: E402
from core.ops.disout import set_total_steps  # noqa: E402
from core.ops.epitome import inference_parameters  # noqa: E402
from core.ops.quant import bit_operations, weight_bits  # noqa: E402
from core.ops.squeeze import squeeze_blocks  # noqa: E402
from core.zoo.mobile import MobileSpace  # noqa: E402
from core.zoo.resnet import ResNetSpace  # noqa: E402


@dataclass
class Recipe:
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    train: int = 5000
    val: int = 1000
    test: int = 2000
    device: str = "cpu"
    threads: int = 1


# -- data and training --------------------------------------------------------------------------
_DATA: dict = {}


def load(recipe: Recipe):
    """shapes32 as uint8 tensors on the recipe's device (cached per process)."""
    key = (recipe.train, recipe.val, recipe.test, recipe.device)
    if key not in _DATA:
        from tasks.classification.data import shapes32

        d = shapes32(train=recipe.train, val=recipe.val, test=recipe.test)
        mean = d.train.mean.to(recipe.device)
        std = d.train.std.to(recipe.device)
        _DATA[key] = {split: (getattr(d, split).images.to(recipe.device), getattr(d, split).labels.to(recipe.device))
                      for split in ("train", "val", "test")} | {"norm": (mean, std)}
    return _DATA[key]


def batches(images: torch.Tensor, labels: torch.Tensor, norm, batch_size: int, augment: bool,
            generator: torch.Generator | None = None):
    """Normalised batches; with `augment`, a shuffled epoch of 4-pixel padded random crops and flips."""
    n = len(labels)
    order = torch.randperm(n, generator=generator) if augment else torch.arange(n)
    order = order.to(images.device)
    mean, std = norm
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        x = images[idx].float() / 255.0
        if augment:
            x = F.pad(x, (4, 4, 4, 4))
            offsets = torch.randint(0, 9, (len(idx), 2), generator=generator).to(x.device)
            span = torch.arange(32, device=x.device)
            rows = (offsets[:, 0, None] + span)[:, :, None]
            cols = (offsets[:, 1, None] + span)[:, None, :]
            x = x[torch.arange(len(idx), device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
            flip = (torch.rand(len(idx), generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        yield (x - mean) / std, labels[idx]


@torch.no_grad()
def accuracy(model: nn.Module, data, split: str) -> float:
    model.eval()
    images, labels = data[split]
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(images, labels, data["norm"], 500, False))
    return correct / len(labels)


def _optimizer(params, recipe: Recipe, lr: float):
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay)


def fit(model: nn.Module, data, recipe: Recipe, seed: int,
        at_epoch: Callable[[int, nn.Module], bool] | None = None) -> nn.Module:
    """Train with the recipe; `at_epoch(e, model)` may change the model before epoch e (return True if it did:
    the optimizer is rebuilt at the current learning rate and the cosine schedule goes on over the steps left)."""
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data["train"][1]) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    set_total_steps(model, total)
    step = 0

    def schedule(lr0: float, done: int):
        opt = _optimizer(model.parameters(), recipe, lr0)
        left = max(1, total - done)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / left)))

    opt, sched = schedule(recipe.lr, 0)
    for epoch in range(recipe.epochs):
        if at_epoch is not None and at_epoch(epoch, model):
            opt, sched = schedule(sched.get_last_lr()[0], step)
        model.train()
        for x, y in batches(*data["train"], data["norm"], recipe.batch_size, True, g):
            loss = F.cross_entropy(model(x), y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"loss {loss.item()} at epoch {epoch}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return model


@dataclass
class Job:
    """One training run: a row label, a seed, how to build the model, the recipe (and an optional epoch hook)."""

    label: str
    seed: int
    build: Callable[[], nn.Module]
    recipe: Recipe
    at_epoch: Callable | None = None
    describe: Callable[[nn.Module, Recipe], dict] | None = None


def run(job: Job) -> dict:
    torch.set_num_threads(job.recipe.threads)
    torch.manual_seed(job.seed)
    data = load(job.recipe)
    model = job.build().to(job.recipe.device)
    start = time.perf_counter()
    model = fit(model, data, job.recipe, job.seed, job.at_epoch)
    row = {"model": job.label, "seed": job.seed, "test_acc": accuracy(model, data, "test"),
           "val_acc": accuracy(model, data, "val"), "train_s": time.perf_counter() - start}
    model = model.cpu().eval()
    row.update({"params": count_params(model), "macs": count_macs(model, torch.zeros(1, 3, 32, 32))})
    if job.describe:
        row.update(job.describe(model, job.recipe))
    return row


def run_all(jobs: list[Job], workers: int) -> list[dict]:
    if workers <= 1:
        rows = []
        for job in jobs:
            rows.append(run(job))
            print(f"  {job.label} seed {job.seed}: test {rows[-1]['test_acc']:.4f} ({rows[-1]['train_s']:.0f} s)",
                  flush=True)
        return rows
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(run, jobs))


def summarise(rows: list[dict], extra: list[str]) -> list[dict]:
    """One row per model: mean +- std of test accuracy over seeds, the seeds, and the model's costs."""
    out = []
    for label in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == label]
        acc = [r["test_acc"] for r in runs]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        row = {"model": label, "test_acc": f"{statistics.mean(acc):.4f} +- {std:.4f}",
               "per_seed": " ".join(f"{a:.4f}" for a in acc),
               "val_acc": f"{statistics.mean(r['val_acc'] for r in runs):.4f}",
               "train_s": f"{statistics.mean(r['train_s'] for r in runs):.0f}"}
        row.update({k: runs[0][k] for k in ["params", "macs", *extra]})
        out.append(row)
    return out


# -- models (module-level functions so that worker processes can build them) ----------------------
def resnet(depth: int, widths: list[int], num_classes: int = 10, **kwargs):
    space = ResNetSpace(depth=depth, widths=widths, num_classes=num_classes, **kwargs)
    return space.build(space.default())


class Partial:
    """A picklable `fn(**kwargs)`."""

    def __init__(self, fn, **kwargs):
        self.fn, self.kwargs = fn, kwargs

    def __call__(self, *args):
        return self.fn(*args, **self.kwargs)


MOBILE_STAGES = [{"channels": 24, "stride": 2, "depths": [1]}, {"channels": 32, "stride": 2, "depths": [2]},
                 {"channels": 64, "stride": 2, "depths": [2]}, {"channels": 96, "stride": 1, "depths": [1]}]


def mobilenet(expansion: int, pointwise: dict | None = None, width: float = 1.0):
    """MobileNetV2-style net for 32x32: stem 16 (stride 1), mb1 16, stages 24x1 (s2), 32x2 (s2), 64x2 (s2),
    96x1, every layer mb{expansion}_k3, no head conv; `width` scales every stage (the first block and stem
    stay at 16)."""
    stages = [dict(s, channels=max(8, int(round(s["channels"] * width)))) for s in MOBILE_STAGES]
    space = MobileSpace(in_channels=3, stem_channels=16, stem_stride=1, first_block={"channels": 16},
                        stages=stages, kernels=[3], expansions=[expansion], allow_skip=False, se_ratio=0.0,
                        activation="relu6", head_channels=0, num_classes=10, dropout=0.0, pointwise=pointwise)
    return space.build(space.default())


def qnn_costs(model: nn.Module, recipe: Recipe) -> dict:
    count = bit_operations(model, torch.zeros(1, 3, 32, 32))
    return {"bops": count.bops, "fp_macs": count.fp_macs, "ops": count.ops,
            "size_kb": weight_bits(model) / 8 / 1024}


def epitome_costs(model: nn.Module, recipe: Recipe) -> dict:
    return {"inference_params": inference_parameters(model)}


class SqueezeAt:
    """An epoch hook: squeeze the widened blocks to `keep` of their channels before epoch `epoch`."""

    def __init__(self, epoch: int, keep: float, calibration: int = 512):
        self.epoch, self.keep, self.calibration = epoch, keep, calibration

    def __call__(self, epoch: int, model: nn.Module) -> bool:
        if epoch != self.epoch:
            return False
        data = _DATA[next(iter(_DATA))]
        images, labels = data["train"]
        calib = [x for x, _ in batches(images[:self.calibration], labels[:self.calibration], data["norm"], 128, False)]
        squeeze_blocks(model, calib, self.keep)
        return True


# -- sub-commands ----------------------------------------------------------------------------------
def jobs_data(args, recipe: Recipe) -> tuple[list[Job], list[str]]:
    nets = [("resnet8-w8", 8, [8, 16, 32]), ("resnet8-w16", 8, [16, 32, 64]), ("resnet20-w16", 20, [16, 32, 64])]
    if args.quick:
        nets = nets[:2]
    return [Job(name, s, Partial(resnet, depth=d, widths=w), recipe) for name, d, w in nets for s in args.seeds], []


def jobs_disout(args, recipe: Recipe) -> tuple[list[Job], list[str]]:
    regs = {"none": None,
            "dropout": {"name": "dropout", "p": 0.09},
            "dropblock": {"name": "dropblock", "p": 0.09, "block_size": 5},
            "disout": {"name": "disout", "dist_prob": 0.09, "block_size": 6, "alpha": 5.0}}
    widths = [args.width, 2 * args.width, 4 * args.width]
    return [Job(name, s, Partial(resnet, depth=args.depth, widths=widths, regularizer=reg), recipe)
            for s in args.seeds for name, reg in regs.items()], []


def jobs_qnn(args, recipe: Recipe) -> tuple[list[Job], list[str]]:
    recipe = replace(recipe, optimizer="adam", lr=2e-3, weight_decay=0.0)
    widths = [args.width, 2 * args.width, 4 * args.width]
    binary = {"name": "binary_conv"}
    w, keep = args.widen, args.keep
    squeeze_epoch = recipe.epochs - max(1, recipe.epochs // 4)
    rows = [("full precision", Partial(resnet, depth=args.depth, widths=widths), None),
            ("binary", Partial(resnet, depth=args.depth, widths=widths, conv=binary), None),
            (f"binary widened x{w:g}", Partial(resnet, depth=args.depth, widths=widths, conv=binary, widen=w), None),
            (f"binary widened x{w:g} squeezed to {keep:g}",
             Partial(resnet, depth=args.depth, widths=widths, conv=binary, widen=w), SqueezeAt(squeeze_epoch, keep)),
            (f"binary widened x{w * keep:g} (squeezed's width)",
             Partial(resnet, depth=args.depth, widths=widths, conv=binary, widen=w * keep), None)]
    jobs = [Job(name, s, build, recipe, hook, qnn_costs) for s in args.seeds for name, build, hook in rows]
    return jobs, ["bops", "fp_macs", "ops", "size_kb"]


def jobs_epitome(args, recipe: Recipe) -> tuple[list[Job], list[str]]:
    recipe = replace(recipe, weight_decay=4e-5)
    m, base = args.multiplier, args.mobile_width
    epitome = {"name": "epitome_conv", "multiplier": m}
    x = torch.zeros(1, 3, 32, 32)
    target = count_macs(mobilenet(6, dict(epitome, sampling="tile"), base), x)
    # the plain net at equal MACs: the same widths with the largest expansion whose MACs fit the epitome net's
    expansion = max(e for e in range(1, 7) if count_macs(mobilenet(e, width=base), x) <= target)
    rows = [("plain e6", Partial(mobilenet, expansion=6, width=base)),
            (f"plain e{expansion} (equal MACs)", Partial(mobilenet, expansion=expansion, width=base))]
    for sampling, label in (("tile", "released NES"), ("fixed", "WSNet"), ("learned", "NES")):
        rows.append((f"epitome {sampling} m{m:g} ({label})",
                     Partial(mobilenet, expansion=6, width=base, pointwise=dict(epitome, sampling=sampling))))
    return [Job(name, s, build, recipe, None, epitome_costs) for s in args.seeds for name, build in rows], \
        ["inference_params"]


COMMANDS = {"data": jobs_data, "disout": jobs_disout, "qnn": jobs_qnn, "epitome": jobs_epitome}
DEFAULTS = {  # the full CPU runs measured in docs/operators.md (qnn: 42 minutes, epitome: 11, with --jobs 2)
    "data": dict(epochs=20, seeds=[0]),
    "disout": dict(epochs=20, seeds=[0, 1, 2], depth=8, width=8),
    "qnn": dict(epochs=60, seeds=[0, 1, 2], depth=8, width=8),
    "epitome": dict(epochs=10, seeds=[0, 1], mobile_width=0.5),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny data, 1 epoch, 1 seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (separate processes)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--depth", type=int, help="ResNet depth (disout, qnn)")
    parser.add_argument("--width", type=int, help="first-stage width of the ResNets (disout, qnn)")
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--widen", type=float, default=4.0, help="qnn: widening factor")
    parser.add_argument("--keep", type=float, default=0.5, help="qnn: fraction of widened channels kept")
    parser.add_argument("--multiplier", type=float, default=2.0, help="epitome: compression ratio")
    parser.add_argument("--mobile-width", type=float, help="epitome: width multiplier of the net")
    args = parser.parse_args(argv)
    defaults = DEFAULTS[args.command]
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key, value in (("depth", 8), ("width", 8), ("mobile_width", 1.0)):
        if getattr(args, key) is None:
            setattr(args, key, value)
    recipe = Recipe(epochs=args.epochs, train=args.train, device=args.device, threads=args.threads)
    if args.quick:
        recipe = replace(recipe, epochs=2, train=500, val=200, test=200)
        args.seeds = args.seeds[:1]
    torch.set_num_threads(args.threads)
    jobs, extra = COMMANDS[args.command](args, recipe)
    start = time.perf_counter()
    print(f"{args.command}: {len(jobs)} runs, recipe {asdict(jobs[0].recipe)}", flush=True)
    rows = run_all(jobs, args.jobs)
    print(f"\n{args.command}: seeds {args.seeds}, {time.perf_counter() - start:.0f} s in all")
    print(table(summarise(rows, extra), ["model", "test_acc", "per_seed", "val_acc", "params", "macs", *extra,
                                          "train_s"]))


if __name__ == "__main__":
    os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
    main()
