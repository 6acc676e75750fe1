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

More one-variable knobs: `--zero-res none|backbone|all`
(the residual blocks' last BN weight at 0; the space's default is the
backbone; for `--model mbv2` it zero-inits MobileNetV2's blocks), `--clip`
(the gradient-norm clip, 35), `--act relu6`, `--bb-init mbv2`
(torchvision MobileNetV2's init on the searched backbone), `--neck fpn`
(torchvision's FPN in place of the searched neck), `--neck-init fpn`,
`--data-seed`, and for `search`: `--search-epochs`, `--arch-start-epoch`,
`--arch-lr`. The JSON line also holds the gradient norms (quantiles, the
number of clipped steps, the first 20 steps).

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
from core.api import Arch
from tasks.detection.baselines import mobilenetv2_fpn_faster_rcnn
from tasks.detection.data import shapes
from tasks.detection.metrics import coco_map, predict
from tasks.detection.space import HitDetectorSpace


def build(args, num_classes: int):
    size = args.image_size
    if args.model == "mbv2":
        torch.manual_seed(args.seed)
        return mobilenetv2_fpn_faster_rcnn(num_classes, args.wm, fpn_channels=args.mbv2_fpn,
                                           representation=max(64, 4 * args.mbv2_fpn), min_size=size, max_size=size,
                                           zero_init_residual=args.zero_res in ("backbone", "all"),
                                           **DETECTOR_KWARGS)
    space = HitDetectorSpace(num_classes=num_classes, width=args.width, fpn_channels=args.fpn_channels,
                             fc_channels=4 * args.fpn_channels, min_size=size, max_size=size,
                             detector_kwargs=DETECTOR_KWARGS, head_blocks=args.head_blocks,
                             head_channels=args.head_channels, init=args.init,
                             zero_init_residual=args.zero_res in ("space", "all"))
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
    apply_variants(model, args)
    return model


def apply_variants(model, args) -> None:
    """One-variable changes of the searched detector (A/B against the baseline's building blocks)."""
    from torch import nn

    body = model.backbone.body
    if args.act == "relu6":  # MobileNetV2's activation in the searched backbone
        for m in body.modules():
            for name, child in m.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(m, name, nn.ReLU6(inplace=True))
    if args.bb_init == "mbv2":  # torchvision MobileNetV2's init: kaiming-normal fan-out, BN 1/0, bias 0
        from core.zoo.mobile import init_weights

        init_weights(body)
    if args.zero_res in ("backbone", "all"):  # zero-init the last BN of every residual block (backbone, or all)
        from tasks.detection.ops import zero_init_residuals

        zero_init_residuals(body if args.zero_res == "backbone" else model)
    if args.neck_init == "fpn":  # torchvision FPN's init on every neck conv: kaiming-uniform a=1, bias 0
        for m in model.backbone.neck.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    if args.neck == "fpn":  # torchvision's FPN (1x1 laterals, 3x3 outputs, P6 max pool) on the searched backbone
        from torchvision.ops.feature_pyramid_network import (
            FeaturePyramidNetwork,
            LastLevelMaxPool,
        )

        neck = model.backbone.neck
        fpn = FeaturePyramidNetwork(body.out_channels, neck.out_channels, extra_blocks=LastLevelMaxPool())

        class _Neck(nn.Module):
            def __init__(self):
                super().__init__()
                self.fpn, self.out_channels = fpn, neck.out_channels

            def forward(self, feats):
                return list(self.fpn({str(i): f for i, f in enumerate(feats)}).values())

        model.backbone.neck = _Neck()


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
    p.add_argument("--search-steps", type=int, default=12, help="search steps per epoch")
    p.add_argument("--search-epochs", type=int, default=1)
    p.add_argument("--arch-start-epoch", type=int, default=0, help="weights-only search epochs before alpha steps")
    p.add_argument("--arch-lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0, help="initialisation and batch-order seed")
    p.add_argument("--data-seed", type=int, default=0, help="the generated data set's seed (the benchmark's: 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--clip", type=float, default=35.0, help="gradient-norm clip (the benchmark's 35)")
    p.add_argument("--zero-res", choices=("space", "none", "backbone", "all"), default="space",
                   help="zero-init the last BN weight of every residual block: the space's default (all), none, "
                        "the backbone's only, or all (for --model mbv2: backbone or all zero-init its blocks)")
    p.add_argument("--act", choices=("relu", "relu6"), default="relu", help="searched backbone's activation")
    p.add_argument("--bb-init", choices=("space", "mbv2"), default="space",
                   help="mbv2: torchvision MobileNetV2's init on the searched backbone only")
    p.add_argument("--neck-init", choices=("space", "fpn"), default="space",
                   help="fpn: torchvision FPN's init on the searched neck's convs")
    p.add_argument("--neck", choices=("search", "fpn"), default="search",
                   help="fpn: torchvision's FPN in place of the searched neck")
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
                                 head_channels=args.head_channels, init=args.init,
                                 zero_init_residual=args.zero_res in ("space", "all"))
        t = time.perf_counter()
        searcher = HitDetSearcher(space, seed=args.seed, epochs=args.search_epochs, steps_per_epoch=args.search_steps,
                                  batch_size=args.batch_size // 2, lr=args.lr, arch_lr=args.arch_lr, flops_lambda=0.01,
                                  arch_start_epoch=args.arch_start_epoch)
        arch = searcher.fit(None, data)
        Path(args.out).write_text(json.dumps(arch.to_dict(), indent=1, sort_keys=True))
        print(json.dumps({"search_s": round(time.perf_counter() - t, 1), "arch": arch.to_dict()}))
        return 0
    model = build(args, data.num_classes)
    example = data.test[0][0][None]
    macs0 = count_macs(model.eval(), example)
    t = time.perf_counter()
    norms: list[float] = []
    losses = train_steps(model, data.train, args.epochs, args.batch_size, args.lr, args.seed, grad_norms=norms,
                         clip=args.clip)
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
           "grad_norm_q": [round(sorted(norms)[int(q * (len(norms) - 1))], 1) for q in (0.1, 0.5, 0.9)],
           "clipped": sum(n > args.clip for n in norms),
           "last_clipped_step": max((i for i, n in enumerate(norms) if n > args.clip), default=None),
           "norms_first20": [round(n, 1) for n in norms[:20]], "train_s": round(train_s, 1), "s_per_step": round(train_s / max(len(losses), 1), 3),
           "args": {k: v for k, v in vars(args).items() if k not in ("mode", "out")}}
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
