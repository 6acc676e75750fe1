"""Ranking quality of one-shot estimators on the tabular benchmark: Kendall tau against the table.

On the `cell201` space and its shipped table (every one of the 729 cells
trained from scratch on digits, `core.evaluation.tabular`), a common seeded
random subset of `--archs` cells (100) is scored by three estimators, each
given the same number of weight-update steps (batches of 64) on `digits().train`:

(a) **SPOS**: a supernet trained by single-path uniform sampling for
    `--epochs` epochs (S steps); every cell scored by
    `SupernetEvaluator` (inherited weights, BN recalibrated on 4 batches,
    accuracy on `digits().val`).
(b) **DNA** (`core.oneshot.dna_ranking.dna_scores`): blockwise distillation
    (Li et al., CVPR 2020) from a teacher trained beforehand on digits (a
    `core.distill.SmallCNN` shaped like the cell201 skeleton's two stages,
    `--dna-teacher-convs` 4 conv-BN-ReLU layers per stage, `--teacher-epochs`
    epochs; extra to the budget, as DNA assumes a trained teacher) into two
    student blocks of an affine-BN cell201 supernet, each ending in an affine
    BatchNorm (`--dna-output-bn`), S/2 steps per block with one uniformly
    sampled path per step; a cell's score is the sum over blocks of DNA's
    `cl_loss` on `digits().val` after BN recalibration on
    `--dna-recal-batches` training batch(es) (lower is better; tau is computed
    on -score). The block-output BN matters: without it a cell's output is a
    raw sum of paths whose scale depends on the candidate, a zero
    (disconnected) output beat most connected cells, and tau fell from 0.55 to
    0.17 on seeds 0-2 (docs/weight_sharing.md); `--dna-teacher-convs 2
    --no-dna-output-bn` runs that variant.
(c) **DC-NAS** (`core.oneshot.dcnas.dcnas_scores`): a SPOS supernet
    trained for S - K * f steps, then the subset is clustered (K =
    `--clusters` by k-means on per-layer feature changes), scored per cluster
    by the supernet evaluator, and each cluster's winner fine-tuned for f =
    `--final-steps` steps; the global score shifts every cluster by its
    winner's fine-tuned accuracy (see the module).

Kendall's tau-b (`scipy.stats.kendalltau`) between each estimator and the
table's final validation accuracy (the table's `accuracy`; its test accuracy
is shown too) and the table's final validation loss (negated: the table's
reproducible signal, see `core/evaluation/tabular.py`), over all subset
cells and, as an extra row, over the cells the table puts above 20 %
(dropping the disconnected cells every estimator recognises). Several
`--seeds` repeat everything (new subset, new supernets, new teacher) and the
table reports each seed and the mean.

    python benchmarks/ranking.py [--archs 100] [--epochs 30] [--seeds 0 1 2] [--clusters 5] [--final-steps 20]
        [--dna-teacher-convs 4] [--[no-]dna-output-bn] [--dna-recal-batches 1]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

from core.evaluation.supernet import SupernetEvaluator  # noqa: E402
from core.evaluation.tabular import TabularEvaluator  # noqa: E402
from core.objective import Objective  # noqa: E402
from core.zoo.cell201 import Cell201Space  # noqa: E402
from core.oneshot.dcnas import dcnas_scores  # noqa: E402
from core.oneshot.dna_ranking import dna_scores  # noqa: E402
from core.supernet.spos import train_supernet  # noqa: E402
from tasks.classification.data import digits  # noqa: E402
from tasks.classification.task import ClassificationTask  # noqa: E402

TASK = ClassificationTask({})
SPOS_TASK = ClassificationTask({"classification": {"label_smoothing": 0.1}})  # SPOS's label smoothing

BATCH = 64
SPOS_LR = 0.1  # the documented cell201 SPOS example (docs/weight_sharing.md)


def tau(score, truth) -> float:
    return float(kendalltau(score, truth).statistic)


# ---------------------------------------------------------------------------------------------
# one seed
# ---------------------------------------------------------------------------------------------
def run_seed(seed: int, args, data, table: TabularEvaluator) -> dict:
    space = table.space
    archs = random.Random(seed).sample(table.all_archs(), args.archs)
    truth_val = np.array([table.value(a, "val") for a in archs])
    truth_loss = np.array([table.value(a, "val_loss") for a in archs])
    truth_test = np.array([table.value(a, "test") for a in archs])
    connected = truth_val > 0.2
    steps_per_epoch = math.ceil(len(data.train) / BATCH)
    budget = args.epochs * steps_per_epoch
    rows = {}

    # (a) SPOS
    t0 = time.perf_counter()
    spos = train_supernet(space, data, SPOS_TASK, epochs=args.epochs, lr=SPOS_LR, seed=seed)
    t1 = time.perf_counter()
    evaluator = SupernetEvaluator(space, data, TASK, supernet=spos, bn_batches=4, seed=seed)
    spos_metrics = [evaluator.score(a) for a in archs]
    score_s = time.perf_counter() - t1
    rows["SPOS"] = (np.array([m["accuracy"] for m in spos_metrics]),
                    {"steps": budget, "train_s": t1 - t0, "score_s": score_s})
    # the same supernet and scoring pass, ranked by its validation loss instead (no extra compute)
    rows["SPOS (loss)"] = (-np.array([m["val_loss"] for m in spos_metrics]),
                           {"steps": budget, "train_s": 0.0, "score_s": 0.0})

    # (b) DNA
    dna, info = dna_scores(space, data, archs, budget // 2, args.teacher_epochs, seed, args.dna_recal_batches,
                           args.dna_teacher_convs, args.dna_output_bn, task=TASK)
    rows["DNA blockwise"] = (dna, {"steps": 2 * (budget // 2), **info})

    # (c) DC-NAS: fewer supernet epochs so that supernet steps + K * final_steps <= the budget
    extra = args.clusters * args.final_steps
    dc_epochs = args.epochs - math.ceil(extra / steps_per_epoch)
    t0 = time.perf_counter()
    dc_supernet = train_supernet(space, data, SPOS_TASK, epochs=dc_epochs, lr=SPOS_LR, seed=seed)
    t1 = time.perf_counter()
    outcome = dcnas_scores(space, dc_supernet, data, TASK, archs, clusters=args.clusters, seed=seed,
                           final_steps=args.final_steps, bn_batches=4)
    rows["DC-NAS"] = (outcome.scores, {"steps": dc_epochs * steps_per_epoch + extra, "train_s": t1 - t0,
                                       "score_s": time.perf_counter() - t1,
                                       "cluster_sizes": sorted(len(v) for v in outcome.clusters().values())})
    # the same supernet, winners picked, fine-tuned and merged on the validation loss instead
    t1 = time.perf_counter()
    outcome = dcnas_scores(space, dc_supernet, data, TASK, archs, clusters=args.clusters, seed=seed,
                           final_steps=args.final_steps, bn_batches=4,
                           objective=Objective(metric="val_loss", direction="min"))
    rows["DC-NAS (loss)"] = (outcome.scores, {"steps": dc_epochs * steps_per_epoch + extra, "train_s": 0.0,
                                              "score_s": time.perf_counter() - t1})

    out = {}
    for name, (score, info) in rows.items():
        best = int(np.argmax(score))
        out[name] = {"tau_val": tau(score, truth_val), "tau_test": tau(score, truth_test),
                     "tau_loss": tau(score, -truth_loss),
                     "tau_loss_connected": tau(score[connected], -truth_loss[connected]),
                     "tau_connected": tau(score[connected], truth_val[connected]),
                     "top1_table_rank": table.rank(archs[best]), "top1_val": float(truth_val[best]), **info}
    out["_subset"] = {"n": len(archs), "connected": int(connected.sum()), "best_val_in_subset": float(truth_val.max()),
                      "ceiling": tau(truth_test, truth_val),
                      "loss_vs_val": tau(-truth_loss, truth_val),
                      "ceiling_connected": tau(truth_test[connected], truth_val[connected])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=30, help="SPOS epochs; sets the step budget S of every estimator")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--final-steps", type=int, default=20)
    parser.add_argument("--dna-recal-batches", type=int, default=1,
                        help="training batches for DNA's BN recalibration (its reset batch: 1, as core.oneshot.dna)")
    parser.add_argument("--dna-teacher-convs", type=int, default=4,
                        help="conv layers per teacher stage (4; 2 was the teacher before the output-BN change)")
    parser.add_argument("--dna-output-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="end each DNA student block in an affine BN, as DNA's blocks (--no-dna-output-bn: the "
                             "cell's raw sum, the earlier behaviour)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = digits()
    table = TabularEvaluator(Cell201Space())
    recipe = table.table.meta.get("recipe", {})
    print(f"cell201 tabular benchmark {table.table.digest} ({len(table.table.archs)} cells, val accuracy after "
          f"{table.epochs} epochs on {recipe.get('train_fraction', '?')} of train); {args.archs} cells per seed; "
          f"budget S = {args.epochs} epochs x {math.ceil(len(data.train) / BATCH)} steps of batch {BATCH}; "
          f"seeds {args.seeds}")
    started = time.perf_counter()
    results = []
    for seed in args.seeds:
        r = run_seed(seed, args, data, table)
        results.append(r)
        s = r["_subset"]
        print(f"\nseed {seed}: {s['n']} cells ({s['connected']} above 20 % in the table), best in subset "
              f"{s['best_val_in_subset']:.4f}; the table's own test accuracy vs its val accuracy: tau "
              f"{s['ceiling']:.3f} ({s['ceiling_connected']:.3f} above 20 %), a noise ceiling")
        print(f"  {'estimator':<14} {'tau(val)':>9} {'tau(test)':>10} {'tau(>20%)':>10} {'tau(loss)':>10} "
              f"{'top-1 rank':>11} {'steps':>6} {'train s':>8} {'score s':>8}  notes")
        for name, row in r.items():
            if name.startswith("_"):
                continue
            notes = {k: v for k, v in row.items() if k in ("teacher_val_acc", "cluster_sizes", "block_mse_first_last")}
            notes = ", ".join(f"{k}={v if not isinstance(v, float) else round(v, 4)}" for k, v in notes.items())
            print(f"  {name:<14} {row['tau_val']:>9.3f} {row['tau_test']:>10.3f} {row['tau_connected']:>10.3f} "
                  f"{row['tau_loss']:>10.3f} {row['top1_table_rank']:>11d} {row['steps']:>6d} "
                  f"{row['train_s']:>8.1f} {row['score_s']:>8.1f}"
                  f"  {notes}")
    names = [n for n in results[0] if not n.startswith("_")]
    print(f"\nmean over {len(results)} seed(s) (std across seeds):")
    print(f"  {'estimator':<14} {'tau(val)':>15} {'tau(test)':>15} {'tau(>20%)':>15} {'tau(loss)':>15} "
          f"{'tau(loss>20%)':>15} {'top-1 rank':>11}")
    for name in names:
        def ms(key):
            vals = [r[name][key] for r in results]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.mean(vals):.3f} +- {sd:.3f}"
        ranks = statistics.mean(r[name]["top1_table_rank"] for r in results)
        print(f"  {name:<14} {ms('tau_val'):>15} {ms('tau_test'):>15} {ms('tau_connected'):>15} "
              f"{ms('tau_loss'):>15} {ms('tau_loss_connected'):>15} {ranks:>11.1f}")
    ceiling = statistics.mean(r["_subset"]["ceiling"] for r in results)
    ceiling_c = statistics.mean(r["_subset"]["ceiling_connected"] for r in results)
    print(f"  {'(table test)':<14} {ceiling:>15.3f} {'':>15} {ceiling_c:>15.3f}   <- the table's test accuracy as an "
          "estimator of its val accuracy")
    loss_vs_val = statistics.mean(r["_subset"]["loss_vs_val"] for r in results)
    print(f"  {'(table loss)':<14} {loss_vs_val:>15.3f}   <- the table's own val loss as an estimator of its val "
          "accuracy")
    for key, what in (("tau_val", "val accuracy"), ("tau_loss", "val loss")):
        best = max(names, key=lambda n: statistics.mean(r[n][key] for r in results))
        best_tau = statistics.mean(r[best][key] for r in results)
        dna_tau = statistics.mean(r["DNA blockwise"][key] for r in results)
        spos_tau = statistics.mean(r["SPOS"][key] for r in results)
        print(f"\ntargets against the table's {what}: best estimator {best} tau {best_tau:.3f} "
              f"(>= 0.5: {'met' if best_tau >= 0.5 else 'NOT met'}); DNA {dna_tau:.3f} vs SPOS {spos_tau:.3f} "
              f"({'DNA above' if dna_tau > spos_tau else 'DNA NOT above'})")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
