"""Controlled diagnostics of the searched-vs-MobileNetV2-FPN gap of `benchmarks/detection.py`.

Each call trains ONE detector with the benchmark's recipe (`train_steps`: SGD
lr 0.02, 50-step warm-up + cosine, clip 35, batch 8, from scratch) on the
benchmark's shapes data and prints one JSON line: AP, MACs (total and split
into backbone + neck, RPN head and per-RoI head), params, training time.
Variants change one thing at a time:

    # the architecture the default benchmark search derives (writes it to a JSON file)
    python benchmarks/detection_diag.py search --out arch.json
    # the searched detector as the benchmark builds it
    python benchmarks/detection_diag.py train --arch arch.json
    #   ... with PyTorch's default init instead of the official code's
    python benchmarks/detection_diag.py train --arch arch.json --init torch
    #   ... with torchvision's TwoMLPHead in place of the 4 searched head blocks
    python benchmarks/detection_diag.py train --arch arch.json --head mlp
    #   ... with 16-channel head blocks (before width: 64)
    python benchmarks/detection_diag.py train --arch arch.json --head-channels 64
    # the baseline
    python benchmarks/detection_diag.py train --model mbv2 --wm 0.75 --mbv2-fpn 64

One thread (`--threads`). MACs as in the benchmark: FlopCounterMode FLOPs / 2
on one 128 px test image in eval mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.detection import DETECTOR_KWARGS, cost_parts, train_steps
from core.cost import count_macs, count_params
from core.space import Arch
from tasks.detection.baselines import mobilenetv2_fpn_faster_rcnn
from tasks.detection.data import shapes
from tasks.detection.metrics import coco_map, predict
from tasks.detection.spaces import HitDetectorSpace


def build(args, num_classes: int):
    size = args.image_size
    if args.model == "mbv2":
        torch.manual_seed(args.seed)
        return mobilenetv2_fpn_faster_rcnn(num_classes, args.wm, fpn_channels=args.mbv2_fpn,
                                           representation=max(64, 4 * args.mbv2_fpn), min_size=size, max_size=size,
                                           **DETECTOR_KWARGS)
    space = HitDetectorSpace(num_classes=num_classes, width=args.width, fpn_channels=args.fpn_channels,
                             fc_channels=4 * args.fpn_channels, min_size=size, max_size=size,
                             detector_kwargs=DETECTOR_KWARGS, head_blocks=args.head_blocks,
                             head_channels=args.head_channels, init=args.init)
    arch = json.loads(Path(args.arch).read_text()) if args.arch else dict(space.default())
    arch = {k: v for k, v in arch.items() if k in space.names}
    torch.manual_seed(args.seed)
    model = space.build(Arch({**dict(space.default()), **arch}))
    if args.head == "mlp":  # torchvision's TwoMLPHead, as the baseline: fpn*49 -> rep -> rep
        from torchvision.models.detection.faster_rcnn import (
            FastRCNNPredictor,
            TwoMLPHead,
        )

        fpn = model.backbone.out_channels
        rep = max(64, 4 * fpn)
        model.roi_heads.box_head = TwoMLPHead(fpn * 49, rep)
        model.roi_heads.box_predictor = FastRCNNPredictor(rep, num_classes + 1)
    return model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("search", "train"))
    p.add_argument("--out", default="arch.json")
    p.add_argument("--arch", default=None, help="arch JSON from `search` (default: the space's default arch)")
    p.add_argument("--model", choices=("searched", "mbv2"), default="searched")
    p.add_argument("--init", choices=("official", "torch"), default="official")
    p.add_argument("--head", choices=("search", "mlp"), default="search")
    p.add_argument("--head-blocks", type=int, default=4)
    p.add_argument("--head-channels", type=int, default=None)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--fpn-channels", type=int, default=128)
    p.add_argument("--wm", type=float, default=0.75)
    p.add_argument("--mbv2-fpn", type=int, default=64)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--train", type=int, default=192)
    p.add_argument("--test", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--search-steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    p.add_argument("--data-seed", type=int, default=0, help="the generated data set's seed (the benchmark's: 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
    data = shapes(image_size=args.image_size, train=args.train, val=16, test=args.test, seed=args.data_seed)
    if args.mode == "search":
        from tasks.detection.search import HitDetSearcher

        size = args.image_size
        space = HitDetectorSpace(num_classes=data.num_classes, width=args.width, fpn_channels=args.fpn_channels,
                                 fc_channels=4 * args.fpn_channels, min_size=size, max_size=size,
                                 detector_kwargs=DETECTOR_KWARGS, head_blocks=args.head_blocks,
                                 head_channels=args.head_channels, init=args.init)
        t = time.perf_counter()
        searcher = HitDetSearcher(space, seed=args.seed, epochs=1, steps_per_epoch=args.search_steps,
                                  batch_size=args.batch_size // 2, lr=args.lr, arch_lr=3e-3, flops_lambda=0.01)
        arch = searcher.fit(None, data)
        Path(args.out).write_text(json.dumps(arch.to_dict(), indent=1, sort_keys=True))
        print(json.dumps({"search_s": round(time.perf_counter() - t, 1), "arch": arch.to_dict()}))
        return 0
    model = build(args, data.num_classes)
    example = data.test[0][0][None]
    macs0 = count_macs(model.eval(), example)
    t = time.perf_counter()
    losses = train_steps(model, data.train, args.epochs, args.batch_size, args.lr, args.seed)
    train_s = time.perf_counter() - t
    metrics = coco_map(data.test.coco, predict(model, data.test, batch_size=16))
    model.eval()
    body, rpn, head = cost_parts(model, example)
    with torch.no_grad():
        images = model.transform([example[0]])[0]
        n_props = len(model.rpn(images, model.backbone(images.tensors))[0][0])
    row = {"tag": args.tag, "model": args.model, "AP": round(metrics["AP"], 2), "AP50": round(metrics["AP50"], 2),
           "AP75": round(metrics["AP75"], 2), "macs_M": round(count_macs(model, example) / 1e6, 1),
           "macs_untrained_M": round(macs0 / 1e6, 1), "body_M": round(body / 1e6, 1), "rpn_M": round(rpn / 1e6, 2),
           "head_roi_M": round(head / 1e6, 3), "test_rois": n_props, "params": count_params(model),
           "first_loss": round(sum(losses[:5]) / 5, 3), "last_loss": round(sum(losses[-5:]) / 5, 3),
           "train_s": round(train_s, 1), "s_per_step": round(train_s / max(len(losses), 1), 3),
           "args": {k: v for k, v in vars(args).items() if k not in ("mode", "out")}}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
