"""PocketNet on the embedded synthetic faces: searched cell x {no KD, KD, multi-step KD} vs MobileFaceNet.

One run, same data, recipe and epochs for every student:

1. DARTS second-order search of a PocketNet cell (softmax head on the
   embedding, training identities split in two halves), then the derived
   cell is built as a small PocketNet-style student.
2. A small teacher (iResNet-18 at `--teacher-width`) trained first with
   ArcFace, saving a checkpoint per epoch.
3. Students, each over `--seeds` seeds, ArcFace (s=64, m=0.5):
   searched without KD; with KD from the final teacher (CE + w MSE of
   normalised embeddings, w = `--kd-weight`, 100 as in the paper); with
   multi-step KD (at epoch e the teacher after its epoch e+1); and a
   MobileFaceNet-style baseline (no KD) whose width multiplier gives the
   MACs closest to the searched student's.
4. 10-fold verification accuracy on the test pairs (identities unseen in
   training), mean +- std over seeds, and TAR@FAR=1e-2; one table.

    .venv/bin/python benchmarks/face.py                     # default, ~10 min on one core
    .venv/bin/python benchmarks/face.py --image-size 112 --identities 256 --epochs 20 --seeds 5   # bigger

Images are 32x32 by default (112x112 is ~12x the compute: too slow for one
CPU core in the time budget); the networks scale their final depthwise
kernel to the last feature map. MACs = multiply-accumulates (torch
FlopCounterMode FLOPs / 2) at the benchmark's input size.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")

from core.cost import count_macs, count_params
from core.engine.config import validate
from core.engine.report import table
from core.engine.runs import seed_everything
from core.oneshot.darts import DartsSearcher
from tasks.face_recognition.data import face_synthetic
from tasks.face_recognition.distill import TeacherSchedule
from tasks.face_recognition.iresnet import IResNet
from tasks.face_recognition.mobilefacenet import MobileFaceNet
from tasks.face_recognition.space import PocketNetSpace, arch_to_genotype
from tasks.face_recognition.task import FaceRecognitionTask


def quiet_lightning() -> None:
    import logging
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def subset_pairs(pairs, n: int):
    """The first `n` pairs of a VerificationSet."""
    small = copy.copy(pairs)
    small.images, small.issame = pairs.images[:2 * n], pairs.issame[:n]
    return small


def make_task(args, seed: int) -> FaceRecognitionTask:
    cfg = validate({"task": "face_recognition", "seed": seed,
                    "face_recognition": {"head": "arcface", "fars": [1e-2], "export_embeddings": False,
                                         "kd_weight": args.kd_weight},
                    "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                              "weight_decay": 5e-4, "accelerator": "cpu", "log_every_n_steps": 50},
                    "test": {"batch_size": 256}})
    return FaceRecognitionTask(cfg)


def train_and_test(args, data, build, seed: int, root: Path, label: str, teacher=None) -> dict:
    seed_everything(seed)
    model = build()
    task = make_task(args, seed)
    start = time.perf_counter()
    task.train(model, data, root / f"{label}-s{seed}", progress=False, teacher=teacher)
    metrics = task.test(model, data)
    return {"accuracy": metrics["accuracy"], "tar": metrics["synthetic_test_tar@far=0.01"],
            "seconds": time.perf_counter() - start}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--identities", type=int, default=48)
    parser.add_argument("--images-per-identity", type=int, default=12)
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--val-pairs", type=int, default=100, help="validation pairs scored after each epoch")
    parser.add_argument("--C", type=int, default=8, help="student channels (PocketNetS: 16)")
    parser.add_argument("--layers", type=int, default=6, help="student cells (PocketNetS: 18)")
    parser.add_argument("--search-epochs", type=int, default=3)
    parser.add_argument("--search-steps", type=int, default=5, help="steps per search epoch")
    parser.add_argument("--teacher-width", type=float, default=0.25)
    parser.add_argument("--kd-weight", type=float, default=100.0, help="w of the KD term (PocketNet: 100)")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_lightning()
    t0 = time.perf_counter()
    data = face_synthetic(args.identities, args.images_per_identity, args.pairs, args.image_size,
                          cache_dir=args.cache_dir)
    data.val = subset_pairs(data.val, args.val_pairs)  # per-epoch validation is only reported; keep it cheap
    print(f"data: {data.num_classes} identities, {len(data.train)} training images, {len(data.val.issame)} val "
          f"and {len(data.test.issame)} test pairs at {args.image_size}x{args.image_size}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="face_bench_"))
    size = args.image_size

    # 1. search
    space = PocketNetSpace(C=args.C, layers=args.layers, input_size=size, num_classes=data.num_classes)
    searcher = DartsSearcher(space, task=FaceRecognitionTask({}), seed=0, order=2, epochs=args.search_epochs, batch_size=32,
                             steps_per_epoch=args.search_steps, lr=0.1, lr_min=0.004, arch_lr=3e-3,
                             supernet={"C": 8, "layers": 5, "stem_multiplier": 3})
    start = time.perf_counter()
    arch = searcher.fit(None, data)
    print(f"search: {time.perf_counter() - start:.0f} s, derived {arch_to_genotype(arch)}", flush=True)

    # 2. teacher, one checkpoint per epoch
    def teacher_net():
        return IResNet(18, 128, args.teacher_width, size)

    seed_everything(0)
    teacher = teacher_net()
    task = make_task(args, 0)
    start = time.perf_counter()
    task.train(teacher, data, root / "teacher", progress=False)
    teacher_acc = task.test(teacher, data)["accuracy"]
    epochs_dir = root / "teacher" / "epochs"
    print(f"teacher: iResNet-18 x{args.teacher_width} {time.perf_counter() - start:.0f} s, "
          f"test accuracy {teacher_acc:.4f}", flush=True)

    # 3. students
    example = torch.zeros(1, 3, size, size)
    searched = lambda: space.build(arch)
    target = count_macs(searched(), example)
    widths = [0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5]
    width = min(widths, key=lambda w: abs(count_macs(MobileFaceNet(128, w, size), example) - target))
    baseline = lambda: MobileFaceNet(128, width, size)
    runs = {
        "searched, no KD": (searched, lambda: None),
        "searched, KD": (searched, lambda: TeacherSchedule(teacher_net(),
                                                           checkpoint=epochs_dir / f"epoch_{args.epochs:03d}.pt")),
        "searched, multi-step KD": (searched, lambda: TeacherSchedule(teacher_net(), epochs_dir=epochs_dir)),
        f"MobileFaceNet x{width:g}, no KD": (baseline, lambda: None),
    }
    rows = []
    for label, (build, make_teacher) in runs.items():
        results = [train_and_test(args, data, build, seed, root, label.replace(" ", "_").replace(",", ""),
                                  make_teacher()) for seed in range(args.seeds)]
        accs = [r["accuracy"] for r in results]
        net = build()
        rows.append({"model": label, "params": count_params(net), "macs": count_macs(net, example),
                     "acc_mean": statistics.mean(accs), "acc_std": statistics.pstdev(accs),
                     "acc_per_seed": " ".join(f"{a:.3f}" for a in accs),
                     "tar@far=1e-2": statistics.mean(r["tar"] for r in results),
                     "s_per_run": statistics.mean(r["seconds"] for r in results)})
        print(f"{label}: {rows[-1]['acc_mean']:.4f} +- {rows[-1]['acc_std']:.4f}", flush=True)
    rows.append({"model": f"teacher iResNet-18 x{args.teacher_width}", "params": count_params(teacher),
                 "macs": count_macs(teacher, example), "acc_mean": teacher_acc, "acc_per_seed": "seed 0"})
    print("\n" + table(rows, ["model", "params", "macs", "acc_mean", "acc_std", "acc_per_seed", "tar@far=1e-2",
                              "s_per_run"]))
    by = {r["model"]: r["acc_mean"] for r in rows}
    ms, kd, no = by["searched, multi-step KD"], by["searched, KD"], by["searched, no KD"]
    base = next(v for k, v in by.items() if k.startswith("MobileFaceNet"))
    print(f"\nmulti-step KD >= KD: {ms >= kd}; KD >= no KD: {kd >= no}; searched (no KD) >= MobileFaceNet: "
          f"{no >= base}")
    print(f"total {time.perf_counter() - t0:.0f} s; run folders in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
