"""Super-resolution: trilevel NAS vs. bicubic vs. a basicsr MSRResNet at no fewer MACs, same training budget.

One run: search on the embedded photographs (scikit-image's), derive, then
train the searched network and the baseline with the same recipe (L1, Adam,
cosine, the same steps, batch and patches, from scratch), and test both and
bicubic on the embedded test photographs and on any `--test-set NAME=DIR`
(HR only: cropped to a multiple of the scale, LR by MATLAB bicubic). The
baseline is basicsr's MSRResNet with the fewest MACs >= the searched network's,
at the searched network's base width (`--baseline-feat`, default `--num-feat`;
num_block 1..40; `--baseline-feat 0`: any num_feat 8..64 step 4 with num_block
1..16, which can pick a wide, shallow and weaker net such as f28 b1), so "at
no more MACs" holds by construction. Params and MACs are at a 1280x720 output.

    python benchmarks/sr.py                                  # defaults below, ~27 min on one core
    python benchmarks/sr.py --stem-cells 1 --path-cells 2 --macs-target 6e9 --train-steps 1000   # ~10 min
    python benchmarks/sr.py --train-seeds 3 --device cuda    # 3 paired trainings per network, ~7 min on a GPU

A single training seed moves either network by ~0.1 dB, as much as the
difference being measured: `--train-seeds K` trains each network K times
(seeds seed..seed+K-1, the same for both, so the differences are paired) and
prints the per-seed differences with their mean.

The defaults (5 stem cells + 1 path cell of 3 ops, base width 16, a
18-GMACs target, 3,000 training steps) are the run docs/benchmarks.md
reports.

Prints one table; `--json PATH` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHARED_SR = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"

#: published efficient-SR comparison points (x2, 1280x720 output): params, Mult-Adds, Set5 and Set14 PSNR/SSIM
#: CARN-M: Ahn, Kang, Sohn, ECCV 2018, Table 3; IMDN: Hui, Gao, Yang, Wang, ACM MM 2019, Table 3
LITERATURE = [
    {"model": "CARN-M (paper, DIV2K)", "params": 412e3, "macs": 91.2e9, "Set5_psnr": 37.53, "Set5_ssim": 0.9583,
     "Set14_psnr": 33.26, "Set14_ssim": 0.9141},
    {"model": "IMDN (paper, DIV2K)", "params": 694e3, "macs": 158.8e9, "Set5_psnr": 38.00, "Set5_ssim": 0.9605,
     "Set14_psnr": 33.63, "Set14_ssim": 0.9177},
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--num-feat", type=int, default=16)
    p.add_argument("--stem-cells", type=int, default=5)
    p.add_argument("--path-cells", type=int, default=1)
    p.add_argument("--ops-per-cell", type=int, default=3)
    p.add_argument("--macs-target", type=float, default=18e9, help="search target, MACs at 1280x720")
    p.add_argument("--macs-mode", default="target", choices=["hinge", "linear", "target"])
    p.add_argument("--macs-pull", default="cells", choices=["cells", "all"],
                   help="below the target, pull MACs up through the cell/kernel levels only, or gamma too")
    p.add_argument("--macs-weight", type=float, default=1.0, help="initial weight of the MACs term")
    p.add_argument("--relaxation", default="sparsestmax", choices=["sparsestmax", "sparsemax", "softmax"])
    p.add_argument("--search-epochs", type=int, default=6)
    p.add_argument("--search-steps", type=int, default=25, help="steps per search epoch")
    p.add_argument("--search-batch", type=int, default=8)
    p.add_argument("--warmup-epochs", type=int, default=2, help="search epochs that train weights only")
    p.add_argument("--order-weight", type=float, default=1e-5, help="sorting term on gamma (0 disables)")
    p.add_argument("--search-patch", type=int, default=16, help="LR patch during the search")
    p.add_argument("--train-steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=32, help="LR patch during training")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="search and train on this torch device (e.g. cuda)")
    p.add_argument("--train-seeds", type=int, default=1,
                   help="train each network with this many seeds (seed, seed+1, ...): the table shows means, and "
                        "the searched-vs-baseline difference is also printed per seed (paired)")
    p.add_argument("--test-set", action="append", default=None, metavar="NAME=DIR",
                   help="extra HR-only test set (default: ../shared/data/sr/Set5 and Set14 when present)")
    p.add_argument("--res-scale", type=float, default=0.2, help="cell residual scale (0.2 in the derivative code)")
    p.add_argument("--init-scale", type=float, default=0.1,
                   help="derived network init: Kaiming-normal x this (basicsr's 0.1); <= 0: PyTorch's default")
    p.add_argument("--baseline-feat", type=int, default=None,
                   help="MSRResNet baseline width (default: the searched network's --num-feat; 0: any of 8..64)")
    p.add_argument("--no-baseline", action="store_true", help="train only the searched network (probes)")
    p.add_argument("--arch", default=None,
                   help="skip the search: train this arch of the space, a searched one or a baseline such as "
                        "{\"baseline\": \"msrresnet\", \"num_feat\": 16, \"num_block\": 16} (a path or JSON text)")
    p.add_argument("--json", default=None, help="also write the rows here")
    return p.parse_args(argv)


def evaluate(model, dataset, scale, device="cpu"):
    from tasks.super_resolution.metrics import psnr_y, ssim_y

    per_set: dict[str, list[tuple[float, float]]] = {}
    model.eval()
    with torch.no_grad():
        for i, name in enumerate(dataset.names):
            lr, hr = dataset[i]
            sr = model(lr[None].to(device))[0].clamp(0, 1).cpu()
            per_set.setdefault(name.split("/", 1)[0], []).append((psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)))
    out = {}
    for s, values in per_set.items():
        out[f"{s}_psnr"] = sum(v[0] for v in values) / len(values)
        out[f"{s}_ssim"] = sum(v[1] for v in values) / len(values)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # full fp32 on GPUs too: TF32 convolutions would move PSNR differences of a few hundredths of a dB
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
    started = time.perf_counter()

    import tasks.super_resolution  # noqa: F401
    from core.cost import count_params
    from core.engine.registry import DATASETS
    from core.engine.report import table
    from core.api import Arch
    from tasks.super_resolution.search import TrilevelSearcher
    from tasks.super_resolution.space import TrilevelSpace, msrresnet_budget
    from tasks.super_resolution.task import train_steps

    test_sets = {}
    for item in args.test_set if args.test_set is not None else \
            [f"{n}={SHARED_SR / n}" for n in ("Set5", "Set14") if (SHARED_SR / n).is_dir()]:
        name, _, path = item.partition("=")
        test_sets[name] = path
    data = DATASETS.build({"name": "sr_embedded", "patch_size": args.patch, "samples_per_epoch": 100000,
                           "test_sets": test_sets}, "data", scale=args.scale)
    search_data = DATASETS.build({"name": "sr_embedded", "patch_size": args.search_patch,
                                  "samples_per_epoch": 2 * args.search_steps * args.search_batch}, "data",
                                 scale=args.scale)
    space = TrilevelSpace(scale=args.scale, num_feat=args.num_feat, stem_cells=args.stem_cells,
                          path_cells=args.path_cells, ops_per_cell=args.ops_per_cell, res_scale=args.res_scale,
                          init_scale=args.init_scale if args.init_scale > 0 else None)
    print(f"trilevel space x{args.scale}: {space.size():.3g} archs; supernet "
          f"{count_params(space.supernet()) / 1e3:.1f}K params; target {args.macs_target / 1e9:.2f} GMACs at 1280x720",
          flush=True)

    t = time.perf_counter()
    torch.manual_seed(args.seed)
    searcher = None
    if args.arch:
        text = Path(args.arch).read_text() if Path(args.arch).is_file() else args.arch
        arch = space.check(json.loads(text))
    else:
        searcher = TrilevelSearcher(space, seed=args.seed, epochs=args.search_epochs,
                                    steps_per_epoch=args.search_steps, batch_size=args.search_batch,
                                    relaxation=args.relaxation, lr=args.lr, arch_lr=3e-3,
                                    macs_target=args.macs_target, macs_weight=args.macs_weight,
                                    warmup_epochs=args.warmup_epochs,
                                    order_weight=args.order_weight, macs_mode=args.macs_mode,
                                    macs_pull=args.macs_pull, device=args.device)
        arch = searcher.fit(None, search_data)
    search_s = time.perf_counter() - t
    macs = space.macs(arch)
    what = arch.to_dict().get("network.path") or arch.to_dict().get("baseline")  # --arch may name a baseline
    print(f"search: {search_s:.0f} s; derived path {what}, {macs / 1e9:.2f} GMACs", flush=True)
    print("derived arch:", json.dumps(arch.to_dict()), flush=True)

    feat = args.num_feat if args.baseline_feat is None else args.baseline_feat
    grid = {"feats": (feat,), "blocks": tuple(range(1, 41))} if feat > 0 else {}
    baseline = msrresnet_budget(args.scale, macs, at_least=True, **grid)
    entries = [("bicubic", Arch({"baseline": "bicubic"})), ("trilevel (searched)", arch),
               (f"MSRResNet f{baseline['num_feat']} b{baseline['num_block']} (basicsr)", baseline)]
    if args.no_baseline:
        entries = entries[:2]
    rows, per_seed = [], {}
    for label, a in entries:
        runs = []
        for k in range(1 if a.get("baseline") == "bicubic" else args.train_seeds):  # bicubic has nothing to train
            seed = args.seed + k
            torch.manual_seed(seed)
            model = space.build(a)
            t = time.perf_counter()
            losses = train_steps(model, data.train, args.train_steps, args.batch, args.lr, seed, device=args.device)
            runs.append({"seed": seed, "train_s": time.perf_counter() - t,
                         "final_l1": sum(losses[-50:]) / max(len(losses[-50:]), 1) if losses else float("nan"),
                         **evaluate(model, data.test, args.scale, args.device)})
            print(f"{label}, training seed {seed}: trained {runs[-1]['train_s']:.0f} s, "
                  f"embedded {runs[-1]['skimage_psnr']:.2f} dB", flush=True)
        row = {"model": label, "params": count_params(model), "macs": space.macs(a),
               **{key: statistics.mean(r[key] for r in runs) for key in runs[0] if key != "seed"}}
        if len(runs) > 1:
            row["skimage_psnr_sd"] = statistics.stdev(r["skimage_psnr"] for r in runs)
        rows.append(row)
        per_seed[label] = runs
    sets = list(dict.fromkeys(k.rsplit("_", 1)[0] for k in rows[0] if k.endswith("_psnr")))
    columns = ["model", "params", "macs", "train_s", *[f"{s}_{m}" for s in sets for m in ("psnr", "ssim")]]
    if args.train_seeds > 1:
        columns.insert(5, "skimage_psnr_sd")
    print("\n" + table(rows + LITERATURE, columns))
    bic, ours, base = rows if len(rows) == 3 else (*rows, None)
    gain = ours["skimage_psnr"] - bic["skimage_psnr"]
    versus = "no baseline trained" if base is None else \
        f"searched - MSRResNet: {ours['skimage_psnr'] - base['skimage_psnr']:+.2f} dB at " \
        f"{ours['macs'] / base['macs']:.2f}x its MACs"
    print(f"\nsearched - bicubic on the embedded test photographs: {gain:+.2f} dB (target >= +2.0); {versus}")
    if base is not None and args.train_seeds > 1:
        for s in sets:
            diffs = [o[f"{s}_psnr"] - b[f"{s}_psnr"] for o, b in zip(per_seed[ours["model"]], per_seed[base["model"]])]
            print(f"  {s}, per training seed (paired): {' '.join(f'{d:+.2f}' for d in diffs)}; mean "
                  f"{statistics.mean(diffs):+.3f} dB, searched >= baseline on {sum(d >= 0 for d in diffs)}/{len(diffs)}")
    print(f"search {search_s:.0f} s, total {time.perf_counter() - started:.0f} s, {args.threads} thread(s)")
    if args.json:
        history = searcher.history if searcher else None
        Path(args.json).write_text(json.dumps({"args": vars(args), "arch": arch.to_dict(), "search_s": search_s,
                                               "history": history, "rows": rows, "per_seed": per_seed},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
