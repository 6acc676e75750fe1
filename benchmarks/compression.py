"""Image compression: the learned codec without and with the perception-consistency (MMD) term, against JPEG and WebP.

One run on the embedded default (scikit-image / scikit-learn photographs; the generated shapes set and its
ResNet-18 for downstream accuracy, trained once and cached): for each seed, a scale-hyperprior codec
(Ballé et al. 2018) is trained at the largest lambda (`--base-steps`), then fine-tuned at every lambda of the
sweep (`--finetune-steps` each) twice from that same base: with the rate-distortion loss alone ("codec"),
and with `+ beta * MMD(phi(x), phi(x_hat))` ("codec+MMD", Yang et al., ACM MM 2020). Equal steps, crops,
batches and seeds for the two, so the only difference is the MMD term. JPEG and WebP (Pillow) are swept
over their qualities on the same images. Everything is measured through real bitstreams: bpp from the
bytes, PSNR and MS-SSIM on the 8-bit test photographs, top-1 of the classifier on the decoded labelled
images (with their own bpp), encode / decode milliseconds per test image on `--threads` threads.

Summaries: BD-rate (PSNR, and MS-SSIM dB) of each codec against JPEG and WebP, per seed and averaged;
the MMD term's BD-accuracy (top-1 points at equal bpp) and BD-PSNR (its PSNR cost at equal bpp) against
the codec without it, per seed and averaged.

    python benchmarks/compression.py                 # 3 seeds, the defaults below
    python benchmarks/compression.py --quick         # a few minutes: tiny steps, one seed, fewer images

Prints the tables; writes curves.png / side_by_side.png / results.json under `--out`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.0035, 0.0067, 0.013],
                   help="rate points (MSE lambdas on the 255^2 scale); the base is trained at the largest")
    p.add_argument("--channels", type=int, default=64, help="N, the transforms' width")
    p.add_argument("--latent-channels", type=int, default=96, help="M, the latent's channels")
    p.add_argument("--hyper-channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base-steps", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--beta", type=float, default=10.0, help="weight of the MMD term")
    p.add_argument("--layers", nargs="+", default=["layer2", "layer3"], help="phi's tapped modules")
    p.add_argument("--mode", default="channels", choices=["channels", "batch"])
    p.add_argument("--labelled-test", type=int, default=300, help="decoded labelled images for top-1")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output folder (default runs/bench_compression/<time>)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 2 lambdas, a few steps")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.lambdas = args.seeds[:1], sorted(args.lambdas)[-2:]
        args.base_steps, args.finetune_steps, args.labelled_test = 40, 20, 60
        args.channels, args.latent_channels, args.hyper_channels = 32, 48, 32
    return args


def mean_std(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:+.2f}"
    return f"{statistics.fmean(values):+.2f} ± {statistics.stdev(values):.2f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from torch.utils.data import Subset

    from core.engine.report import table
    from core.engine.runs import write_json
    from tasks.image_compression.classical import sweep
    from tasks.image_compression.data import compression_embedded
    from tasks.image_compression.downstream import embedded_classifier
    from tasks.image_compression.evaluate import Curve, closest_by_rate, compare, downstream, measure_curve
    from tasks.image_compression.losses import RateDistortionLoss
    from tasks.image_compression.metrics import psnr_uint8
    from tasks.image_compression.models import ScaleHyperprior
    from tasks.image_compression.perception import PerceptionConsistency
    from tasks.image_compression.report import curve_plot, side_by_side
    from tasks.image_compression.train import fit_codec

    start = time.perf_counter()
    out = Path(args.out or f"runs/bench_compression/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    data = compression_embedded(patch_size=args.patch, samples_per_epoch=4096)
    images = [data.test[i] for i in range(len(data.test))]
    names = data.test.names
    labelled = Subset(data.downstream.test, range(min(args.labelled_test, len(data.downstream.test))))
    t0 = time.perf_counter()
    classifier = embedded_classifier(data.downstream)
    print(f"classifier ready in {time.perf_counter() - t0:.0f} s; test images {', '.join(names)}; "
          f"{len(labelled)} labelled images; threads {args.threads}", flush=True)

    t0 = time.perf_counter()
    jpeg, webp = (measure_curve(label, sweep(fmt), images, classifier, labelled,
                                [{"quality": c.quality} for c in sweep(fmt)])
                  for label, fmt in (("JPEG", "jpeg"), ("WebP", "webp")))
    accuracy_original = downstream(None, classifier, labelled)["accuracy"]
    print(f"JPEG and WebP sweeps in {time.perf_counter() - t0:.0f} s; classifier top-1 on the originals "
          f"{accuracy_original:.3f}", flush=True)

    lambdas = sorted(args.lambdas)
    variants = ("codec", "codec+MMD")
    curves: dict[str, list[Curve]] = {v: [] for v in variants}
    timings = []
    kept = {}
    for seed in args.seeds:
        torch.manual_seed(seed)
        base = ScaleHyperprior(args.channels, args.latent_channels, args.depth, args.hyper_channels)
        t0 = time.perf_counter()
        fit_codec(base, data.train, RateDistortionLoss(lambdas[-1]), args.base_steps, batch_size=args.batch_size,
                  lr=args.lr, seed=seed)
        print(f"seed {seed}: base at lambda {lambdas[-1]:g}, {args.base_steps} steps in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        for variant in variants:
            codecs, settings = [], []
            for lmbda in lambdas:
                codec = copy.deepcopy(base)
                perception = None
                beta = 0.0
                if variant == "codec+MMD":
                    beta = args.beta
                    perception = PerceptionConsistency(copy.deepcopy(classifier), args.layers, mode=args.mode)
                t0 = time.perf_counter()
                history = fit_codec(codec, data.train, RateDistortionLoss(lmbda, "mse", beta, perception),
                                    args.finetune_steps, batch_size=args.batch_size, lr=args.lr, seed=seed)
                seconds = time.perf_counter() - t0
                codecs.append(codec)
                tail = history[-max(1, len(history) // 10):]
                settings.append({"lambda": lmbda, "train_s": seconds,
                                 "train_mmd": statistics.fmean(h.get("mmd", math.nan) for h in tail)})
            curve = measure_curve(variant, codecs, images, classifier, labelled, settings)
            curve.label = variant
            curves[variant].append(curve)
            for p in curve.points:
                print(f"seed {seed} {variant:9s} lambda {p['lambda']:<7g} bpp {p['bpp']:.3f} PSNR {p['psnr']:.2f} "
                      f"MS-SSIM {p['ms_ssim_db']:.2f} dB | labelled bpp {p['acc_bpp']:.3f} top-1 {p['accuracy']:.3f} "
                      f"| fine-tune {p['train_s']:.0f} s", flush=True)
            if seed == args.seeds[0]:
                kept[variant] = codecs[len(codecs) // 2]

    # -- summaries ------------------------------------------------------------------------------------------
    per_seed = []
    for i, seed in enumerate(args.seeds):
        row = {"seed": seed}
        for variant in variants:
            c = curves[variant][i]
            row[f"{variant} vs JPEG"] = compare(jpeg, c)["bd_rate_psnr"]
            row[f"{variant} vs WebP"] = compare(webp, c)["bd_rate_psnr"]
        mmd_vs_rd = compare(curves["codec"][i], curves["codec+MMD"][i])
        row["MMD: BD-acc (pts)"] = 100 * mmd_vs_rd["bd_accuracy"]
        row["MMD: BD-PSNR (dB)"] = mmd_vs_rd["bd_psnr"]
        per_seed.append(row)

    def averaged(variant: str) -> Curve:
        keys = [k for k in curves[variant][0].points[0]]
        points = []
        for j in range(len(lambdas)):
            points.append({k: statistics.fmean(c.points[j][k] for c in curves[variant]) for k in keys})
        return Curve(variant, points)

    mean_curves = {v: averaged(v) for v in variants}
    summary = []
    for variant in variants:
        rows = [compare(jpeg, c) for c in curves[variant]]
        rows_w = [compare(webp, c) for c in curves[variant]]
        summary.append({"codec": variant,
                        "BD-rate vs JPEG (PSNR, %)": mean_std([r["bd_rate_psnr"] for r in rows]),
                        "vs JPEG (MS-SSIM dB, %)": mean_std([r["bd_rate_ms_ssim"] for r in rows]),
                        "BD-rate vs WebP (PSNR, %)": mean_std([r["bd_rate_psnr"] for r in rows_w]),
                        "BD-acc vs JPEG (pts)": mean_std([100 * r["bd_accuracy"] for r in rows])})
    points_rows = []
    for curve in (mean_curves["codec"], mean_curves["codec+MMD"]):
        for p in curve.points:
            points_rows.append({"codec": curve.label, "setting": f"lambda {p['lambda']:g}", "bpp": p["bpp"],
                                "PSNR": p["psnr"], "MS-SSIM dB": p["ms_ssim_db"], "labelled bpp": p["acc_bpp"],
                                "top-1": p["accuracy"], "enc ms": p["encode_ms"], "dec ms": p["decode_ms"]})
    for curve in (jpeg, webp):
        for p in curve.points:
            points_rows.append({"codec": curve.label, "setting": f"quality {int(p['quality'])}", "bpp": p["bpp"], "PSNR": p["psnr"], "MS-SSIM dB": p["ms_ssim_db"],
                                "labelled bpp": p["acc_bpp"], "top-1": p["accuracy"], "enc ms": p["encode_ms"],
                                "dec ms": p["decode_ms"]})

    # encode / decode time per test image, the codec's middle point next to Pillow at the nearest rate
    middle = mean_curves["codec"].points[len(lambdas) // 2]
    for curve in (jpeg, webp):
        nearest = min(curve.points, key=lambda p: abs(math.log(p["bpp"] / middle["bpp"])))
        timings.append({"codec": curve.label, "bpp": nearest["bpp"], "encode ms": nearest["encode_ms"],
                        "decode ms": nearest["decode_ms"]})
    timings.insert(0, {"codec": f"codec (lambda {middle['lambda']:g})", "bpp": middle["bpp"],
                       "encode ms": middle["encode_ms"], "decode ms": middle["decode_ms"]})

    print(f"\nrate points (means over {len(args.seeds)} seeds; bpp / PSNR / MS-SSIM on the {len(images)} test photographs; "
          f"top-1 on {len(labelled)} decoded labelled images at their own bpp; originals: {accuracy_original:.3f})")
    print(table(points_rows, ["codec", "setting", "bpp", "PSNR", "MS-SSIM dB", "labelled bpp", "top-1", "enc ms",
                              "dec ms"]))
    print("\nBD-rates (negative: fewer bits than the anchor at equal quality) and BD-accuracy, mean ± std over seeds")
    print(table(summary, list(summary[0])))
    print("\nper seed: BD-rate (PSNR, %) against JPEG and WebP; the MMD term against the codec without it "
          "(top-1 points and PSNR dB at equal bpp)")
    print(table(per_seed, list(per_seed[0])))
    print(f"\nMMD term, mean over seeds: BD-accuracy {mean_std([r['MMD: BD-acc (pts)'] for r in per_seed])} top-1 "
          f"points, BD-PSNR {mean_std([r['MMD: BD-PSNR (dB)'] for r in per_seed])} dB")
    print(f"\nencode / decode per test image ({args.threads} thread(s), mean over {len(images)} images)")
    print(table(timings, ["codec", "bpp", "encode ms", "decode ms"]))

    # -- pictures and the record -----------------------------------------------------------------------------
    plots = [mean_curves["codec"], mean_curves["codec+MMD"], jpeg, webp]
    curve_plot(out / "rd_psnr.png", plots, "psnr", "PSNR (dB, 8-bit RGB)", "rate-distortion, test photographs")
    curve_plot(out / "rd_ms_ssim.png", plots, "ms_ssim_db", "MS-SSIM (dB)", "rate-distortion, test photographs")
    curve_plot(out / "rate_accuracy.png", plots, "accuracy", "top-1 of the ResNet-18",
               f"rate-accuracy, {len(labelled)} decoded labelled images", x="acc_bpp")
    image = images[0]
    panels = [("original", image)]
    for variant, codec in kept.items():
        decoded = codec.decompress(data_bytes := codec.compress(image))
        rate = 8 * len(data_bytes) / (image.shape[1] * image.shape[2])
        panels.append((f"{variant} {rate:.3f} bpp, {psnr_uint8(image, decoded):.2f} dB", decoded))
    rate = 8 * len(kept["codec"].compress(image)) / (image.shape[1] * image.shape[2])
    for fmt in ("jpeg", "webp"):
        codec, decoded, bpp = closest_by_rate(sweep(fmt), image, rate)
        panels.append((f"{codec.label} {bpp:.3f} bpp, {psnr_uint8(image, decoded):.2f} dB", decoded))
    side_by_side(out / "side_by_side.png", panels, f"{names[0]} at matched bpp (seed {args.seeds[0]})")
    write_json(out / "results.json", {
        "args": vars(args), "accuracy_original": accuracy_original,
        "curves": {v: [c.points for c in cs] for v, cs in curves.items()},
        "jpeg": jpeg.points, "webp": webp.points, "per_seed": per_seed, "timings": timings})
    print(f"\noutputs: {out}/rd_psnr.png, rd_ms_ssim.png, rate_accuracy.png, side_by_side.png, results.json; "
          f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
