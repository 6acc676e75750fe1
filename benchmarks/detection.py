"""Hit-Detector vs a hand-designed detector of comparable MACs, on the embedded shapes set.

One run: (1) the end-to-end Hit-Detector search (backbone, neck and head
together, paper sub-spaces, the paper's FLOPs penalty lambda = 0.01) on
the shapes training set: 4 epochs of 24 steps, the first 2 weight-only (the
paper's schedule starts the architecture steps halfway, epoch 6 of 12); (2)
the derived detector and a MobileNetV2-FPN Faster R-CNN
(torchvision components, width and FPN channels chosen as the smallest grid
point with at least the searched detector's MACs) trained with the same
recipe and number of steps; (3) COCO mAP on the test split; (4) the released
Hit-Detector's parameters and MACs at 800x1333 and 800x1200 next to the
paper's numbers. Prints one table.

    .venv/bin/python benchmarks/detection.py                  # default, 3 paired training seeds: ~13 min on one core
    .venv/bin/python benchmarks/detection.py --train-seeds 1  # one training per detector: ~6 min, noisy
    .venv/bin/python benchmarks/detection.py --random-arch    # control: a random arch of the space, no search
    .venv/bin/python benchmarks/detection.py --width 0.25 --head-blocks 4   # the paper's layout (4 head blocks)
    .venv/bin/python benchmarks/detection.py --zero-init-residual none      # every norm at weight 1 (the released code's)

Defaults (docs/benchmarks.md, Detection, explains each): the searched detector
is built at width 0.4 with no searched box-head blocks (the FC reads the RoI
features), because at 128 px the paper's 4 per-RoI head blocks take 57 % of
the MACs and add no AP, so those MACs go to the backbone instead. Both
detectors start every residual block as the identity (`--zero-init-residual
both`: the last BN weight of the block is 0), the same rule for both; without
it, the searched backbone's 15 residual blocks start with gradient norms of
50-200 that the clip at 35 cuts. Because the supernet's residual candidates
also start as the identity, their alpha gets no detection gradient until the
weights have trained: a search of 1 epoch of 12 steps (half a pass over
each half, alpha from its first step) derives detectors of uneven quality
(16-39 AP over seeds 0-4); 4 epochs of 24 steps
with the weight-only half first put the searched detector ahead of the
baseline on 14 of 15 paired trainings over seeds 0-4 (the length does most
of it: with `--arch-start-epoch 0`, 11 of 15, cheaper archs). With that
schedule the paper's lambda = 0.01 works (a short search follows only the
MACs term, which `--flops-lambda 0` avoids at the price of larger archs); the
baseline is matched to the derived detector's MACs either way. `--random-arch` replaces the search by a uniform sample of the
same space: a control for how much of the margin is the search's.
The same-size MobileNetV2-FPN with torchvision's own initialisation is
trained as well, as a third row (`--no-torchvision-init-row` skips it).

One training run per detector is noisy here (the AP of one detector spans
2-7 AP across training seeds), so every detector is trained with the same
`--train-seeds K` seeds (default 3: seed .. seed+K-1; the data and the search
stay those of `--seed`), the table shows means, and the paired per-seed
differences are printed with their mean. With `--train-seeds 1` seed 0 is
the one paired training in 15 where the searched detector is behind (-2.7).

MACs = multiply-accumulates (torch FlopCounterMode FLOPs / 2), counted on one
test image in eval mode (so with the proposals the RPN actually keeps).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.cost import count_macs, count_params
from core.engine.report import table
from tasks.detection.baselines import mobilenetv2_fpn_faster_rcnn
from tasks.detection.data import collate, shapes
from tasks.detection.metrics import coco_map, predict
from tasks.detection.ops import PAPER_SUBSPACES, parse_op
from tasks.detection.search import HitDetSearcher
from tasks.detection.space import HitDetectorSpace, hit_detector_arch
from tasks.detection.task import detection_loss, warmup_cosine

PAPER = {"params": 27.12e6, "flops_800x1200": 272.3e9}
#: torchvision RPN / RoI settings, the same for both detectors: 300/150 proposals before/after NMS in
#: training, 150/50 at test, 32 RoIs sampled per image
DETECTOR_KWARGS = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150, "rpn_pre_nms_top_n_test": 150,
                   "rpn_post_nms_top_n_test": 50, "box_batch_size_per_image": 32}


def train_steps(model, dataset, epochs: int, batch_size: int, lr: float, seed: int, warmup: int = 50,
                grad_norms: list | None = None, clip: float = 35.0) -> list[float]:
    """SGD (momentum 0.9, wd 1e-4), linear warm-up then cosine, grad-norm clip 35: the same for both detectors.

    `grad_norms`, when given, receives every step's gradient norm before clipping."""
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(seed))
    total = epochs * len(loader)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, min(warmup, total // 2), 0.1))
    model.train()
    losses = []
    for _ in range(epochs):
        for images, targets in loader:
            loss, _ = detection_loss(model, images, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if grad_norms is not None:
                grad_norms.append(float(norm))
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
    return losses


def cost_parts(model, image: torch.Tensor) -> tuple[int, int, int]:
    """MACs of a two-stage detector's parts: backbone + neck on `image`, the RPN head on its features, and the
    box head + predictor on one 7x7 RoI (multiply by the number of RoIs)."""
    with torch.no_grad():
        feats = model.backbone(image)
    body = count_macs(model.backbone, image)
    rpn = count_macs(model.rpn.head, (list(feats.values()),))
    roi = torch.zeros(1, model.backbone.out_channels, 7, 7)
    head = count_macs(torch.nn.Sequential(model.roi_heads.box_head, model.roi_heads.box_predictor), roi)
    return body, rpn, head


def released_costs(sizes=((800, 1333), (800, 1200)), proposals: int = 1000) -> list[dict]:
    """Params and MACs of the released Hit-Detector (81 classes): backbone + neck + RPN head on the padded
    image, plus `proposals` x (searched head blocks + FC + predictor) per RoI. RoIAlign, NMS and anchor
    decoding are not multiply-accumulates of a layer and are not counted."""
    model = HitDetectorSpace(num_classes=80).build(hit_detector_arch()).eval()
    rows = []
    for h, w in sizes:
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        body, rpn, head = cost_parts(model, torch.zeros(1, 3, ph, pw))
        rows.append({"model": f"Hit-Detector released ({h}x{w}, {proposals} RoIs)", "params": count_params(model),
                     "macs": body + rpn + proposals * head, "backbone+neck": body, "rpn": rpn,
                     "head_per_roi": head})
    return rows


def random_arch(space: HitDetectorSpace, rng: random.Random, image: torch.Tensor, max_macs: float | None,
                tries: int = 500):
    """A uniform sample of `space`; with `max_macs` (millions), the first sample whose MACs on `image` lie in
    [0.9, 1.0] x max_macs (rejection sampling, so still uniform within that band)."""
    if max_macs is None:
        print("random arch (no search)", flush=True)
        return space.sample(rng)
    for attempt in range(1, tries + 1):
        arch = space.sample(rng)
        macs = count_macs(space.build(arch).eval(), image) / 1e6
        if 0.9 * max_macs <= macs <= max_macs:
            print(f"random arch (no search): {macs:.1f}M MACs after {attempt} samples", flush=True)
            return arch
    raise SystemExit(f"--random-macs {max_macs}: no arch in [{0.9 * max_macs:.1f}, {max_macs}]M in {tries} samples")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train", type=int, default=192)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--width", type=float, default=0.4, help="channel multiplier of the searched detector")
    p.add_argument("--fpn-channels", type=int, default=128,
                   help="neck/head channels before --width (the paper's 256; 128 x 0.25 = 32)")
    p.add_argument("--head-blocks", type=int, default=0,
                   help="searched box-head blocks (the paper's 4; 0: the FC reads the RoI features)")
    p.add_argument("--head-channels", type=int, default=None,
                   help="head blocks' channels before --width (default: --fpn-channels, the paper's layout)")
    p.add_argument("--backbone-ops", choices=("undilated", "paper"), default="undilated",
                   help="the searched backbone's candidates: the paper's 8-op sub-space without its dilated ops "
                        "(the default at 128 px: ir_k3_d1_e3/e6, ir_k5_d1_e3/e6, ir_k7_d1_e6) or all 8")
    p.add_argument("--init", choices=("torch", "official"), default="torch",
                   help="the searched detector's initialisation (official: ggjy/HitDet.pytorch's)")
    p.add_argument("--zero-init-residual", choices=("both", "searched", "none"), default="both",
                   help="start every residual block as the identity (last BN weight 0): in both detectors (the "
                        "default, the same rule for both), in the searched one only, or in neither")
    p.add_argument("--search-zero-init", choices=("on", "off"), default="on",
                   help="off: the search's supernet keeps BN weight 1 in its residual candidates (the derived "
                        "detector still follows --zero-init-residual)")
    p.add_argument("--no-torchvision-init-row", action="store_true",
                   help="skip the third row (the baseline with torchvision's own init, trained as well by default)")
    p.add_argument("--search-epochs", type=int, default=4)
    p.add_argument("--search-steps", type=int, default=24, help="steps per search epoch (24 = one pass of a half)")
    p.add_argument("--arch-start-epoch", type=int, default=None,
                   help="search epochs of weight-only steps before the architecture steps start (default: half of "
                        "--search-epochs, as the paper's schedule, alpha from epoch 6 of 12)")
    p.add_argument("--arch-lr", type=float, default=3e-3, help="the paper's 4e-4 barely moves in a few steps")
    p.add_argument("--flops-lambda", type=float, default=0.01,
                   help="weight of the search's normalised MACs term (the paper's 0.01; 0: detection loss only, "
                        "which derives larger detectors, docs/benchmarks.md)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-seeds", type=int, default=3,
                   help="train each detector with this many seeds (seed, seed+1, ...; the same for all, so the "
                        "differences are paired): the table shows means, the per-seed differences are printed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-released", action="store_true")
    p.add_argument("--random-arch", action="store_true",
                   help="control: no search; a uniform sample of the same space (seeded by --seed) takes the searched "
                        "detector's place, so the table says whether the search or the space wins")
    p.add_argument("--random-macs", type=float, default=None, metavar="M",
                   help="with --random-arch: resample until the arch's MACs lie in [0.9 M, M] millions (a random "
                        "arch at a searched arch's cost)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
    started = time.perf_counter()

    data = shapes(image_size=args.image_size, train=args.train, val=16, test=args.test, seed=args.seed)
    size = args.image_size
    kw = DETECTOR_KWARGS
    candidates = "paper"
    if args.backbone_ops == "undilated":
        candidates = {"backbone": [op for op in PAPER_SUBSPACES["backbone"] if parse_op(op)[2] == 1]}
    space_kw = {"num_classes": data.num_classes, "candidates": candidates, "width": args.width,
                "fpn_channels": args.fpn_channels, "fc_channels": 4 * args.fpn_channels, "min_size": size,
                "max_size": size, "detector_kwargs": kw, "head_blocks": args.head_blocks,
                "head_channels": args.head_channels, "init": args.init,
                "zero_init_residual": args.zero_init_residual != "none"}
    space = HitDetectorSpace(**space_kw)
    example = data.test[0][0][None]
    t = time.perf_counter()
    search_steps, arch_start = args.search_steps, args.arch_start_epoch
    if args.random_arch:
        arch = random_arch(space, random.Random(args.seed), example, args.random_macs)
    else:
        print(f"searching ({args.search_epochs} epoch(s) x {args.search_steps} steps) ...", flush=True)
        search_space = HitDetectorSpace(**{**space_kw, "zero_init_residual": False}) \
            if args.search_zero_init == "off" else space
        searcher = HitDetSearcher(search_space, seed=args.seed, epochs=args.search_epochs,
                                  steps_per_epoch=args.search_steps, batch_size=args.batch_size // 2, lr=args.lr,
                                  arch_lr=args.arch_lr, flops_lambda=args.flops_lambda,
                                  arch_start_epoch=args.arch_start_epoch)
        arch = searcher.fit(None, data)
        # what ran: an epoch is at most one pass over a half; the searcher resolves the default start epoch
        search_steps, arch_start = searcher.epoch_steps, searcher.arch_start_epoch
        del searcher
    search_s = time.perf_counter() - t

    torch.manual_seed(args.seed)
    searched = space.build(arch)
    searched_macs = count_macs(searched, example)
    print(f"derived in {search_s:.0f} s: {searched_macs / 1e6:.1f}M MACs, arch {arch.key}", flush=True)
    zero_baseline = args.zero_init_residual == "both"
    grid = []
    for wm, fpn in itertools.product((0.25, 0.35, 0.5, 0.75, 1.0), (16, 24, 32, 48, 64, 96)):
        torch.manual_seed(args.seed)
        model = mobilenetv2_fpn_faster_rcnn(data.num_classes, wm, fpn_channels=fpn, representation=max(64, 4 * fpn),
                                            min_size=size, max_size=size, zero_init_residual=zero_baseline, **kw)
        grid.append((count_macs(model, example), wm, fpn))
    above = sorted(g for g in grid if g[0] >= searched_macs)
    _, wm, fpn = above[0] if above else max(grid)

    def baseline_factory(zero_init):
        return lambda: mobilenetv2_fpn_faster_rcnn(data.num_classes, wm, fpn_channels=fpn,
                                                   representation=max(64, 4 * fpn), min_size=size, max_size=size,
                                                   zero_init_residual=zero_init, **kw)

    name = "random arch" if args.random_arch else "Hit-Detector searched"
    models = [(f"{name} (width {args.width}, FPN {args.fpn_channels}, {args.head_blocks} head blocks"
               + (f" ({args.head_channels} ch)" if args.head_channels else "") + ")", lambda: space.build(arch)),
              (f"MobileNetV2-FPN x{wm} (FPN {fpn})" + (", zero-init residual" if zero_baseline else ""),
               baseline_factory(zero_baseline))]
    if zero_baseline and not args.no_torchvision_init_row:  # the same baseline with torchvision's own init
        models.append((f"MobileNetV2-FPN x{wm} (FPN {fpn}), torchvision init", baseline_factory(False)))

    rows, per_seed = [], {}
    for label, build in models:
        runs = []
        for seed in range(args.seed, args.seed + args.train_seeds):
            print(f"training {label}, seed {seed} ...", flush=True)
            torch.manual_seed(seed)
            model = build()
            t = time.perf_counter()
            losses = train_steps(model, data.train, args.epochs, args.batch_size, args.lr, seed)
            train_s = time.perf_counter() - t
            metrics = coco_map(data.test.coco, predict(model, data.test, batch_size=16))
            runs.append({"AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"],
                         "first_loss": sum(losses[:5]) / 5, "last_loss": sum(losses[-5:]) / 5, "train_s": train_s})
        per_seed[label] = runs
        row = {"model": label, "params": count_params(model), "macs": count_macs(model, example),
               **{k: statistics.mean(r[k] for r in runs) for k in runs[0]}}
        if len(runs) > 1:
            row["AP_sd"] = statistics.stdev(r["AP"] for r in runs)
        rows.append(row)
    print(f"\nshapes {size}px, {args.train} train / {args.test} test images, {args.epochs} epochs x batch "
          f"{args.batch_size} for all; search {args.search_epochs} epoch(s) x {search_steps} steps, "
          f"architecture steps from epoch {arch_start}, flops lambda {args.flops_lambda} "
          + ("[not run: --random-arch] " if args.random_arch else "") +
          f"({search_s:.0f} s); {args.threads} thread(s); zero-init residual: {args.zero_init_residual}; "
          f"backbone ops: {args.backbone_ops}; search zero-init: {args.search_zero_init}")
    kind = "random" if args.random_arch else "searched"
    print(f"{kind} arch {arch.key}: " + ", ".join(f"{k}={v}" for k, v in sorted(arch.items())))
    columns = ["model", "params", "macs", "AP", "AP50", "AP75", "first_loss", "last_loss", "train_s"]
    print(table(rows, columns[:4] + ["AP_sd"] + columns[4:] if args.train_seeds > 1 else columns))
    if args.train_seeds > 1:
        ours, base = per_seed[models[0][0]], per_seed[models[1][0]]
        diffs = [o["AP"] - b["AP"] for o, b in zip(ours, base)]
        print(f"{kind} - baseline AP per training seed (paired): {' '.join(f'{d:+.2f}' for d in diffs)}; "
              f"mean {statistics.mean(diffs):+.2f}, {kind} ahead on {sum(d > 0 for d in diffs)}/{len(diffs)}")
    if not args.skip_released:
        released = released_costs()
        for r in released:
            r["paper_params"] = PAPER["params"]
        print("\nreleased Hit-Detector (81 classes) vs the paper (27.12M params, 272.3B FLOPs at 800x1200, "
              "1000 proposals):")
        print(table(released, ["model", "params", "macs", "backbone+neck", "rpn", "head_per_roi"]))
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
