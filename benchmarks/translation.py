"""Image translation side by side: teacher, student alone, portable GAN distillation (+ PU-GAN), searched U-Net.

On the embedded paired default (64-px grey -> colour tiles of the bundled
photographs), per seed and with one step budget for every student:

1. teacher: pix2pix's U-Net at ngf 16 (6 levels), pix2pix recipe (vanilla GAN + 100 x L1);
2. student alone: the same U-Net at 1/4 width (ngf 4), the same recipe;
3. distilled: the same student, portable GAN distillation from the teacher (L1 on
   outputs, L1 feature and Gram terms on two tapped maps, a student
   discriminator seeing real, teacher and student images) + the same L1 to the target;
4. distilled + PU: the same with the PU-GAN loss for D_S and G_S (prior 0.3, +0.1
   every tenth of the run up to 0.6, the official schedule scaled to the run);
5. searched: regularized evolution over the U-Net space under the student's MACs
   (fitness: validation PSNR after a short L1 training), the best U-Net retrained
   with the student's recipe. The hand U-Net scaled to the same MACs is the
   student itself (ngf 4 is the widest pix2pix U-Net within its MACs), so row 2 is
   its score.

Test metrics: PSNR, SSIM (torchmetrics) and the Frechet / kernel distances on
the `photo_classifier` features (not FID: no Inception weights are used). The
first seed also writes a grid (input | teacher | student alone | distilled |
target), the ONNX export of the distilled student checked in onnxruntime, and
the teacher's and student's params/MACs/latency.

    python benchmarks/translation.py            # 3 seeds (docs/benchmarks.md)
    python benchmarks/translation.py --quick    # a fast check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-steps", type=int, default=1200)
    p.add_argument("--steps", type=int, default=800, help="training steps of every student (the shared budget)")
    p.add_argument("--search-budget", type=int, default=24, help="candidates the search trains")
    p.add_argument("--search-steps", type=int, default=400, help="proxy training steps per candidate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench_translation"))
    p.add_argument("--quick", action="store_true", help="1 seed, 60/40 steps, a 4-candidate search")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.teacher_steps, args.steps = args.seeds[:1], 60, 40
        args.search_budget, args.search_steps = 4, 20
    return args


def run_seed(seed: int, args, out: Path, first: bool) -> dict:
    import torch

    from core.engine.config import load_config
    from core.engine.export import export_onnx
    from core.engine.runs import seed_everything, write_json
    from core.evaluation.base import Evaluator  # noqa: F401  (registries)
    from core.journal import Journal
    from core.objective import Objective
    from core.search import Search
    from core.strategies.evolution import RegularizedEvolution
    from tasks.image_translation.metrics import DistributionDistance, photo_classifier, score_generator
    from tasks.image_translation.report import cost_rows, save_grid
    from tasks.image_translation.search import TranslationEvaluator
    from tasks.image_translation.space import UNetTranslatorSpace
    from tasks.image_translation.task import ImageTranslationTask
    from tasks.image_translation.training import Recipe, train_distillation, train_pix2pix

    cfg = load_config(ROOT / "configs/image_translation/_base_.yaml", [f"seed={seed}"])
    task = ImageTranslationTask(cfg)
    data = task.data()
    space = task.space(data)
    # the search space sized to the student's budget: 4 to 32 channels per level
    search_space = UNetTranslatorSpace(**task.build_context(data), widths=(4, 6, 8, 12, 16, 24, 32))
    extractor = photo_classifier()
    rows, models = [], {}

    def recipe(steps):
        return Recipe(max_steps=steps, batch_size=8, seed=seed, device=args.device)

    def test(label, model, seconds, extra=None):
        model = model.cpu().eval()
        scores = score_generator(model, data.test)
        dist = DistributionDistance(extractor, "photo_classifier")
        with torch.no_grad():
            for i in range(0, len(data.test), 36):
                idx = range(i, min(i + 36, len(data.test)))
                x = torch.stack([data.test[j][0] for j in idx])
                y = torch.stack([data.test[j][1] for j in idx])
                dist.update(model(x), y)
        cost = cost_rows({label: model}, task.example_input(data), latency=False)[0]
        row = {"seed": seed, "model": label, "params": cost["params"], "macs": cost["macs"],
               "psnr": scores["psnr"], "ssim": scores["ssim"], **dist.compute(), "seconds": seconds, **(extra or {})}
        rows.append(row)
        models[label] = model
        print(f"  seed {seed} {label:14s} psnr {row['psnr']:.3f}  ssim {row['ssim']:.4f}  "
              f"fd {row['fd_photo_classifier']:.3f}  {seconds:.0f} s", flush=True)

    def gan(label, arch, steps, builder=space):
        seed_everything(seed)
        model = builder.build(arch)
        start = time.perf_counter()
        train_pix2pix(model, task.discriminator(data), data.train, task.gan_loss(), recipe(steps), desc=label)
        test(label, model, time.perf_counter() - start, {"arch": arch.key})
        return model

    teacher = gan("teacher", task.baseline("teacher", space, data), args.teacher_steps)
    student_arch = task.baseline("student", space, data)
    gan("student_alone", student_arch, args.steps)

    for label, mode in (("distilled", "vanilla"), ("distilled_pu", "pu")):
        seed_everything(seed)
        student = space.build(student_arch)
        task.options.distill = {"gan_loss": mode}
        task.options.prior = {"init": 0.3, "mode": "stepped", "every": max(1, args.steps // 10), "increment": 0.1,
                              "cap": 0.6}
        distill = task.make_distillation(teacher.cpu(), student, data, teacher.arch, student_arch)
        start = time.perf_counter()
        train_distillation(distill, data.train, recipe(args.steps), desc=label)
        distill.close()
        test(label, student, time.perf_counter() - start, {"arch": student_arch.key})
        teacher.cpu()

    # the search under the student's MACs, then the found U-Net with the student's recipe
    seed_everything(seed)
    budget = space.macs(student_arch)
    objective = Objective.from_config(metric="psnr", direction="max", constraints=[f"macs <= {budget:.0f}"])
    strategy = RegularizedEvolution(search_space, seed=seed, objective=objective, population_size=8, sample_size=3)
    evaluator = TranslationEvaluator(search_space, data, steps=args.search_steps, seed=seed, threads=args.threads,
                                     device=args.device)
    journal_path = out / f"seed{seed}" / "journal.sqlite"
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    journal_path.unlink(missing_ok=True)
    journal = Journal(journal_path)
    start = time.perf_counter()
    summary = Search(search_space, strategy, evaluator, objective, journal, budget=args.search_budget,
                     progress=False).run()
    journal.close()
    search_seconds = time.perf_counter() - start
    best = summary.best_arch
    write_json(out / f"seed{seed}" / "best_arch.json", best.to_dict())
    print(f"  seed {seed} search: {summary.evaluations} trained, {summary.infeasible} over the MACs, "
          f"{search_seconds:.0f} s; best {best.key} ({search_space.macs(best):.3g} MACs vs {budget:.3g})", flush=True)
    gan("searched_unet", best, args.steps, search_space)
    rows[-1]["search_seconds"] = search_seconds

    if first:
        import numpy as np

        with torch.no_grad():
            idx = np.linspace(0, len(data.test) - 1, 8).astype(int)
            x = torch.stack([data.test[j][0] for j in idx])
            y = torch.stack([data.test[j][1] for j in idx])
            save_grid(out / "grid.png", [x] + [models[k](x) for k in ("teacher", "student_alone", "distilled")] + [y])
        diff = export_onnx(models["distilled"], task.example_input(data), out / "student_distilled.onnx")
        costs = cost_rows({"teacher": models["teacher"], "student": models["distilled"]}, task.example_input(data))
        write_json(out / "costs.json", {"onnx_max_abs_diff": diff, "rows": costs})
        print(f"  ONNX export of the distilled student: max |onnxruntime - torch| = {diff:.2e}", flush=True)
        for c in costs:
            print(f"  {c['model']:8s} params {c['params']:.0f}  MACs {c['macs']:.3g}  latency {c['latency_ms']:.2f} ms "
                  f"(CPU, batch 1, 1 thread)", flush=True)
    return {"rows": rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from core.engine.report import table
    from core.engine.runs import write_json

    start = time.perf_counter()
    rows = []
    print(f"translation benchmark: seeds {args.seeds}, teacher {args.teacher_steps} steps, students "
          f"{args.steps} steps, search {args.search_budget} x {args.search_steps} steps, {args.threads} thread(s), "
          f"{args.device}", flush=True)
    for i, seed in enumerate(args.seeds):
        rows += run_seed(seed, args, out, first=i == 0)["rows"]
    write_json(out / "results.json", {"args": vars(args), "rows": rows, "seconds": time.perf_counter() - start})
    columns = ["seed", "model", "params", "macs", "psnr", "ssim", "fd_photo_classifier", "kd_photo_classifier",
               "seconds"]
    print("\n" + table(rows, columns))
    labels = list(dict.fromkeys(r["model"] for r in rows))
    means = []
    for label in labels:
        group = [r for r in rows if r["model"] == label]
        means.append({"model": label, **{k: sum(r[k] for r in group) / len(group) for k in columns[2:]}})
    print(f"\nmean over seeds {args.seeds}:\n" + table(means, columns[1:]))
    m = {r["model"]: r for r in means}
    alone, dist, pu, found = m["student_alone"], m["distilled"], m["distilled_pu"], m["searched_unet"]
    print("\ntargets (means over seeds):")
    for name, row in (("distilled", dist), ("distilled_pu", pu)):
        print(f"  {name} vs student alone: PSNR {row['psnr'] - alone['psnr']:+.3f} dB, SSIM "
              f"{row['ssim'] - alone['ssim']:+.4f}, FD {row['fd_photo_classifier'] - alone['fd_photo_classifier']:+.3f}"
              f" (lower is better) -> {'met' if row['psnr'] > alone['psnr'] and row['ssim'] > alone['ssim'] and row['fd_photo_classifier'] < alone['fd_photo_classifier'] else 'missed'}")
    print(f"  searched U-Net vs hand U-Net at the same MACs (= student alone): PSNR "
          f"{found['psnr'] - alone['psnr']:+.3f} dB, SSIM {found['ssim'] - alone['ssim']:+.4f} at "
          f"{found['macs'] / alone['macs']:.2f}x its MACs -> {'met' if found['psnr'] > alone['psnr'] else 'missed'}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
