"""Time to score 100 sub-networks: weight inheritance from a supernet vs building each network standalone.

For each space (`cell201`, whose supernet is switched in place, and the
`mobile_digits` MBConv space, whose paths are copied out into standalone
networks by `space.inherit`), the same seeded `--archs` archs are scored on
`digits().val` three ways, one after the other in one process, one thread:

1. **inheritance**: `SupernetEvaluator.score(arch)` on a SPOS supernet:
   inherit the path's weights, recalibrate BN on 4 training batches of 64,
   evaluate (the supernet's own training, `--supernet-epochs`, is timed
   separately: it is paid once for any number of archs);
2. **standalone, no training**: `space.build(arch)` (fresh weights), the same
   BN recalibration, the same evaluation: the cost of building each network,
   with a score that means nothing (the floor of any standalone method);
3. **standalone, 1 epoch from scratch**: `space.build(arch)`, one epoch of SGD
   (momentum 0.9, lr 0.05, batch 64, 17 steps) on `digits().train`, evaluate:
   the cheapest score that means something without a supernet.

`--train-archs` limits the archs of row 3 (it is by far the slowest); its
time for `--archs` archs is then extrapolated from the per-arch mean and
marked so. Ratios are row time / inheritance time.

    python benchmarks/supernet_throughput.py [--archs 100] [--train-archs 100] [--supernet-epochs 10]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from core.evaluation.supernet import SupernetEvaluator  # noqa: E402
from core.supernet.bn import recalibrate_bn  # noqa: E402
from core.zoo.cell201 import Cell201Space  # noqa: E402
from core.zoo.mobile import digits_space  # noqa: E402
from core.supernet.spos import train_supernet  # noqa: E402
from tasks.classification.data import digits  # noqa: E402
from tasks.classification.task import ClassificationTask  # noqa: E402

TASK = ClassificationTask({})
SPOS_TASK = ClassificationTask({"classification": {"label_smoothing": 0.1}})  # SPOS's label smoothing

BATCH = 64


def distinct_archs(space, n: int, seed: int = 0):
    rng, seen = random.Random(seed), {}
    while len(seen) < n:
        seen.setdefault(space.sample(rng), None)
    return list(seen)


def standalone_bn(space, archs, data, bn_batches, val) -> list[float]:
    accs = []
    for arch in archs:
        net = space.build(arch, num_classes=data.num_classes)
        recalibrate_bn(net, bn_batches)
        accs.append(TASK.score(net, val)["accuracy"])
    return accs


def standalone_train(space, archs, data, val, seed: int = 0) -> list[float]:
    accs = []
    for arch in archs:
        torch.manual_seed(seed)
        net = space.build(arch, num_classes=data.num_classes)
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5)
        net.train()
        for x, y in DataLoader(data.train, batch_size=BATCH, shuffle=True,
                               generator=torch.Generator().manual_seed(seed)):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        accs.append(TASK.score(net, val)["accuracy"])
    return accs


def run_space(name, space, data, args) -> list[tuple[str, float, str, float]]:
    archs = distinct_archs(space, args.archs)
    t0 = time.perf_counter()
    supernet = train_supernet(space, data, SPOS_TASK, epochs=args.supernet_epochs, lr=0.1)
    supernet_s = time.perf_counter() - t0
    evaluator = SupernetEvaluator(space, data, TASK, supernet=supernet, bn_batches=4, bn_batch_size=BATCH)
    val = evaluator._val_data
    rows = []

    t0 = time.perf_counter()
    inherited = [evaluator.score(a)["accuracy"] for a in archs]
    t_inherit = time.perf_counter() - t0
    rows.append(("inheritance (supernet evaluator)", t_inherit, "", statistics.mean(inherited)))

    t0 = time.perf_counter()
    fresh = standalone_bn(space, archs, data, evaluator._bn_data, val)
    rows.append(("standalone: build + BN recal + eval", time.perf_counter() - t0, "", statistics.mean(fresh)))

    subset = archs[:args.train_archs]
    t0 = time.perf_counter()
    trained = standalone_train(space, subset, data, val)
    t_train = time.perf_counter() - t0
    note = "" if len(subset) == len(archs) else f"extrapolated from {len(subset)} archs"
    rows.append(("standalone: build + 1 epoch + eval", t_train * len(archs) / len(subset), note,
                 statistics.mean(trained)))
    print(f"\n{name}: {len(archs)} archs; supernet training ({args.supernet_epochs} epochs SPOS, paid once): "
          f"{supernet_s:.1f} s; mode '{evaluator.path}'")
    print(f"  {'method':<38} {'total s':>8} {'ms/arch':>8} {'x inherit':>10} {'mean val acc':>13}  note")
    for label, seconds, note, acc in rows:
        print(f"  {label:<38} {seconds:>8.2f} {seconds / len(archs) * 1e3:>8.1f} {seconds / t_inherit:>10.1f} "
              f"{acc:>13.3f}  {note}")
    amortised = (t_inherit + supernet_s) / len(archs) * 1e3
    print(f"  inheritance incl. the supernet's training: {amortised:.1f} ms/arch for {len(archs)} archs "
          f"({rows[2][1] / (t_inherit + supernet_s):.1f}x faster than 1-epoch standalone training)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=100)
    parser.add_argument("--train-archs", type=int, default=100, help="archs actually trained in row 3")
    parser.add_argument("--supernet-epochs", type=int, default=10)
    parser.add_argument("--spaces", nargs="+", default=["cell201", "mobile_digits"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits()
    spaces = {"cell201": Cell201Space, "mobile_digits": digits_space}
    print(f"scoring {args.archs} sub-networks on digits ({len(data.val)} val images), {args.threads} thread(s)")
    started = time.perf_counter()
    for name in args.spaces:
        run_space(name, spaces[name](), data, args)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
