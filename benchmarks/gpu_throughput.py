"""Training throughput of the one-shot searchers on one device: SPOS and DARTS steps, side by side in one process.

Rows (each ratio is measured in this one process, warm-up steps first, then
timed steps between `torch.cuda.synchronize()` calls):

1. `SPOSTrainer.fit` vs its own raw step (mobile space, 224 px, batch 64): the
   trainer's samples/s (epochs after the first, from its history) next to a
   bare loop over batches already on the device doing the same work per step
   (path sampling, forward, smoothed cross-entropy, backward, clipping, SGD);
   and the same bare loop with one host read of the loss per step, as the
   trainer did before it summed its statistics on the device;
2. SPOS supernet vs the same sampled archs trained standalone (224 px, batch
   64): each of `--archs` archs trains a few steps as a path of the supernet
   and as `space.build(arch)` (warm-up steps per arch, so cuDNN's autotuning
   is paid on both sides); 3. the same at 32 px, batch 256 (CIFAR space);
4. DARTS supernet weight step (C=16, 8 cells, batch 64, 32 px) and
5. DARTS first-order search step (architecture + weight step): the plain
   step with a host read of the loss per step (the loop before this change),
   the plain step without it (the default now), then each lever of
   `DartsSearcher` (fused edges, channels-last, bf16 autocast, CUDA graphs,
   all but compile together, torch.compile) in ms/step and samples/s, with the
   speed-up over the first line; and a derived network's training step (the
   DARTS_V2 cell at the supernet's C and number of cells).

On a CPU (no GPU, or `--device cpu`) it runs tiny sizes by default
(`--size tiny`), which checks the script, not the hardware. `--quick` times
fewer steps. `--budget-s` stops starting new rows when the time is spent
(compile goes last: its first call traces and compiles, timed separately).
`--out FILE.md` also writes the table (and FILE.json the rows).

    python benchmarks/gpu_throughput.py [--quick] [--device cuda] [--size full|tiny] [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from core.engine.data import DataSplits  # noqa: E402
from core.api import activate, architecture_parameters  # noqa: E402
from core.zoo.darts import DartsSpace, genotype_to_arch  # noqa: E402
from core.zoo.mobile import MobileSpace, cifar_space  # noqa: E402
from core.oneshot.bilevel import BilevelSearcher  # noqa: E402
from core.oneshot.darts import DartsSearcher, _GraphedStep, _on_side_stream  # noqa: E402
from core.supernet.spos import SPOSTrainer, supernet_path  # noqa: E402
from core.testing import TinyClassification  # noqa: E402

SIZES = {  # name -> settings
    "full": {"spos": [("224 px, batch 64", "imagenet", 224, 64), ("32 px, batch 256", "cifar", 32, 256)],
             "darts": {"C": 16, "layers": 8, "px": 32, "batch": 64}, "images": 640},
    "tiny": {"spos": [("64 px, batch 8", "imagenet", 64, 8), ("32 px, batch 16", "cifar", 32, 16)],
             "darts": {"C": 4, "layers": 3, "px": 16, "batch": 8}, "images": 48},
}
LEVERS = [  # (label, DartsSearcher keyword arguments)
    ("fused edges", {"fused_edges": True}),
    ("channels-last", {"channels_last": True}),
    ("bf16 autocast", {"precision": "bf16"}),
    ("CUDA graphs", {"cuda_graphs": True}),
    ("fused + channels-last + bf16 + graphs", {"fused_edges": True, "channels_last": True, "precision": "bf16",
                                              "cuda_graphs": True}),
    ("torch.compile", {"compile": True}),
]


class Clock:
    def __init__(self, device: torch.device, budget_s: float):
        self.device, self.start, self.budget_s = device, time.perf_counter(), budget_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def per_step(self, step, warmup: int, steps: int) -> float:
        """Seconds per call of `step()` after `warmup` calls."""
        for _ in range(warmup):
            step()
        self.sync()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        self.sync()
        return (time.perf_counter() - t) / steps


def synthetic(n: int, px: int, classes: int, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, px, px, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return DataSplits("synthetic", ds, ds, ds, classes, (3, px, px))


def batches_on(device, data: DataSplits, batch: int, count: int, memory_format=torch.contiguous_format):
    x, y = data.train.tensors
    out = []
    for i in range(count):
        idx = torch.arange(i * batch, (i + 1) * batch) % len(x)
        out.append((x[idx].to(device).contiguous(memory_format=memory_format), y[idx].to(device)))
    return out


class Rows(list):
    """The measured rows; written to `out` (markdown and JSON) after every row, so a run cut short keeps them."""

    def __init__(self, header: str, out: Path | None):
        super().__init__()
        self.header, self.out = header, out

    def save(self) -> None:
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(markdown(self, self.header))
            self.out.with_suffix(".json").write_text(json.dumps({"header": self.header, "rows": list(self)}, indent=2))


def row(rows: Rows, section, what, seconds, batch, base=None, note=""):
    entry = {"section": section, "what": what, "ms_per_step": 1e3 * seconds, "samples_per_s": batch / seconds,
             "ratio": None if base is None else base / seconds, "note": note}
    rows.append(entry)
    rows.save()
    ratio = "" if entry["ratio"] is None else f"{entry['ratio']:6.2f}x"
    print(f"  {what:<62} {entry['ms_per_step']:9.1f} ms/step {entry['samples_per_s']:9.0f} samples/s {ratio:>8}"
          f"  {note}", flush=True)
    return entry


# -- SPOS -------------------------------------------------------------------------------------------------

def spos_space(kind: str) -> MobileSpace:
    return MobileSpace(num_classes=1000) if kind == "imagenet" else cifar_space(num_classes=10)


def spos_rows(clock: Clock, rows: list, label: str, kind: str, px: int, batch: int, images: int, steps: int,
              archs: int, with_fit: bool) -> None:
    device = clock.device
    space = spos_space(kind)
    data = synthetic(max(images, 2 * batch), px, 1000 if kind == "imagenet" else 10)
    section = f"SPOS, mobile space, {label}"
    print(f"\n{section}", flush=True)
    torch.manual_seed(0)
    supernet = space.supernet().to(device)
    opt = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5)
    device_batches = batches_on(device, data, batch, 4)
    rng = random.Random(0)

    def raw_step(read: bool = False):
        x, y = device_batches[rng.randrange(len(device_batches))]
        activate(supernet, supernet_path(space, space.sample(rng)))
        loss = F.cross_entropy(supernet(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(supernet.parameters(), 5.0)
        opt.step()
        if read:
            loss.item()

    if with_fit:
        raw = clock.per_step(raw_step, warmup=max(3, steps // 3), steps=steps)
        row(rows, section, "raw step (batches on the device, no host read)", raw, batch)
        read = clock.per_step(lambda: raw_step(read=True), warmup=2, steps=steps)
        row(rows, section, "raw step + host read of the loss per step", read, batch, raw,
            "the trainer's loop before this change read 3 values per step")
        per_epoch = max(2, math.ceil(steps / 2))
        trainer = SPOSTrainer(space, data, TinyClassification(label_smoothing=0.1), epochs=3,
                              steps_per_epoch=per_epoch, batch_size=batch, device=str(device))
        trainer.fit(supernet)
        clock.sync()
        timed = trainer.history[1:]
        seconds = sum(r["seconds"] for r in timed) / (per_epoch * len(timed))
        row(rows, section, "SPOSTrainer.fit (epochs 2-3 of 3)", seconds, batch, raw,
            "ratio = fit / raw step (target >= 0.9)")

    # the same archs as supernet paths and as standalone networks
    sampled = [space.sample(random.Random(100 + i)) for i in range(archs)]
    per_arch = max(2, steps // archs)
    x, y = device_batches[0]
    sup, alone = 0.0, 0.0
    for arch in sampled:
        activate(supernet, supernet_path(space, arch))

        def sup_step():
            loss = F.cross_entropy(supernet(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        sup += clock.per_step(sup_step, warmup=2, steps=per_arch)
        net = space.build(arch).to(device)
        net_opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=4e-5)

        def alone_step(net=net, net_opt=net_opt):
            loss = F.cross_entropy(net(x), y)
            net_opt.zero_grad(set_to_none=True)
            loss.backward()
            net_opt.step()

        alone += clock.per_step(alone_step, warmup=2, steps=per_arch)
    row(rows, section, f"{archs} archs trained standalone (space.build)", alone / archs, batch)
    row(rows, section, f"the same {archs} archs as supernet paths", sup / archs, batch, alone / archs,
        "ratio = supernet / standalone (target >= 0.9)")


# -- DARTS ------------------------------------------------------------------------------------------------

def darts_parts(settings: dict, device: torch.device, levers: dict):
    space = DartsSpace(C=settings["C"], layers=settings["layers"], num_classes=10)
    searcher = DartsSearcher(space, device=str(device), supernet={"C": settings["C"], "layers": settings["layers"]},
                             batch_size=settings["batch"], task=TinyClassification(), **levers)
    torch.manual_seed(0)
    model = space.supernet(C=settings["C"], layers=settings["layers"], num_classes=10).to(device)
    searcher.supernet = model
    searcher.setup(model)  # the levers: channels-last, fused edges, compile, bf16
    model.train()
    alphas = architecture_parameters(model)
    ids = {id(a) for a in alphas}
    weights = [p for p in model.parameters() if id(p) not in ids]
    w_opt = torch.optim.SGD(weights, lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3,
                             capturable=searcher.cuda_graphs)
    return space, searcher, model, alphas, weights, w_opt, a_opt


def darts_rows(clock: Clock, rows: list, settings: dict, steps: int, skip_compile: bool) -> None:
    device = clock.device
    batch = settings["batch"]
    data = synthetic(4 * batch, settings["px"], 10)
    results = {"weight": [], "search": []}
    print(f"\nDARTS supernet, C={settings['C']}, {settings['layers']} cells, batch {batch}, {settings['px']} px",
          flush=True)
    variants = [("plain step + host read of the loss per step", {}, True), ("plain step (default now)", {}, False)]
    variants += [(label, levers, False) for label, levers in LEVERS]
    base = {}
    for label, levers, read in variants:
        if levers.get("cuda_graphs") and device.type != "cuda":
            continue
        if levers.get("compile") and (skip_compile or clock.left() < 100):
            print(f"  {label}: skipped ({'--skip-compile' if skip_compile else 'time budget spent'})", flush=True)
            continue
        if clock.left() < 20:
            print(f"  {label}: skipped (time budget spent)", flush=True)
            continue
        space, searcher, model, alphas, weights, w_opt, a_opt = darts_parts(settings, device, levers)
        fmt = torch.channels_last if searcher.channels_last else torch.contiguous_format
        (x, y), (xv, yv) = batches_on(device, data, batch, 2, fmt)

        def weight_step(x=x, y=y, searcher=searcher, model=model, weights=weights, w_opt=w_opt):
            loss = F.cross_entropy(searcher.forward_of(model)(x), y)
            w_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=weights)
            nn.utils.clip_grad_norm_(weights, 5.0)
            w_opt.step()
            return loss.detach(), loss.detach()

        def search_step(searcher=searcher, model=model):  # the plain step: the graph, if any, is made below
            return BilevelSearcher.train_step(searcher, model, (x, y), (xv, yv), False, alphas, weights, w_opt, a_opt)

        note = ""
        for kind, fn in (("weight", weight_step), ("search", search_step)):
            call = (lambda fn=fn: fn()[0].item()) if read else fn
            if searcher.cuda_graphs:  # eager steps on a side stream first (they create the optimiser states)
                for _ in range(3):
                    _on_side_stream(fn)
                graph = _GraphedStep(lambda fn=fn: fn(), ())
                call = (lambda graph=graph: graph(()))
            if searcher.compile:
                clock.sync()
                first = time.perf_counter()
                call()
                clock.sync()
                note = f"first call (trace + compile) {time.perf_counter() - first:.0f} s"
            seconds = clock.per_step(call, 3, steps)
            what = f"{'weight step' if kind == 'weight' else 'search step (1st order)'}: {label}"
            results[kind].append(row(rows, f"DARTS {kind} step", what, seconds, batch, base.get(kind), note))
            base.setdefault(kind, seconds)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # a derived network (the paper's DARTS_V2 cell at the supernet's width and depth), one training step
    if clock.left() > 10:
        space = DartsSpace(C=settings["C"], layers=settings["layers"], num_classes=10)
        net = space.build(genotype_to_arch("DARTS_V2")).to(device).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        (x, y), = batches_on(device, data, batch, 1)

        def net_step():
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        row(rows, "DARTS weight step", "derived network (DARTS_V2 cell, same C and cells)",
            clock.per_step(net_step, 3, steps), batch, base.get("weight"))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(rows: list, header: str) -> str:
    lines = [header, "", "| section | what | ms/step | samples/s | ratio | note |", "|---|---|---:|---:|---:|---|"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['section']} | {r['what']} | {r['ms_per_step']:.1f} | {r['samples_per_s']:.0f} | {ratio} "
                     f"| {r['note']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full on CUDA, tiny on CPU")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--budget-s", type=float, default=300.0, help="no new row starts after this many seconds")
    parser.add_argument("--archs", type=int, default=4, help="archs of the supernet-vs-standalone rows")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the table (.md) and rows (.json) here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    size = SIZES[args.size or ("full" if device.type == "cuda" else "tiny")]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = {"spos": 8 if args.quick else 20, "darts": 5 if args.quick else 12}
    clock = Clock(device, args.budget_s)
    header = (f"GPU throughput on {device_name(device)}, torch {torch.__version__}, "
              f"{'quick' if args.quick else 'full'} run, size {args.size or ('full' if device.type == 'cuda' else 'tiny')}")
    print(header, flush=True)
    rows = Rows(header, args.out)
    for i, (label, kind, px, batch) in enumerate(size["spos"]):
        if clock.left() < 30:
            print(f"\nSPOS {label}: skipped (time budget spent)")
            continue
        spos_rows(clock, rows, label, kind, px, batch, size["images"], steps["spos"], args.archs, with_fit=i == 0)
    darts_rows(clock, rows, size["darts"], steps["darts"], args.skip_compile)
    print(f"\n{time.perf_counter() - clock.start:.0f} s in all", flush=True)
    rows.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
