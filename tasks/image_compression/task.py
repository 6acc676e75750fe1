"""The image compression task: train a codec with `R + lambda D (+ beta MMD)`, test it through its bitstream.

Config section `image_compression:` (the task's options):

- `lmbda` (0.0067), `distortion` (`mse` | `ms-ssim`): the rate-distortion trade-off (see `losses.py`).
- `beta` (0): the weight of the perception-consistency term; > 0 trains the "discernible" codec.
- `perception`: `{layers: [layer2, layer3], mode: channels, kernel: gaussian, sigma: null}`, the
  classifier's taps and the MMD (see `perception.py`).
- `classifier`: phi and the downstream model: `embedded` (a ResNet-18 trained once on the generated
  shapes) or `{name: resnet50, checkpoint: path.pt, kwargs: {num_classes: 10}, mean: [...], std: [...],
  input_size: 224}` (any torchvision model, or `timm:<name>`, with local weights).
- `aux_lr`, `min_lr_ratio`: the quantile optimizer's learning rate, the cosine schedule's floor.
- `cost_size` [H, W] (512 x 768): the image size params / MACs / latency are reported at.
- `jpeg_qualities`, `webp_qualities`: Pillow's sweeps drawn on the same axes.
- `curve`: more `model.pt` files (the same codec trained at other lambdas): with them, `test` reports
  BD-rates against JPEG and WebP over the whole curve.
- `side_by_side`: how many test images get an `original | ours | JPEG | WebP` picture at matched bpp.
- `downstream` (true): report the classifier's top-1 on decoded images (needs `data.downstream`).

`train` section: `epochs` x (`data.samples_per_epoch` / `batch_size`) steps of Adam at `lr`,
`grad_clip`, `accelerator`, `devices`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from core.engine.registry import DATASETS, TASKS, ConfigError
from core.task import Task
from core.api import Arch, SearchSpace
from tasks.image_compression.classical import JPEG_QUALITIES, WEBP_QUALITIES, sweep
from tasks.image_compression.data import CompressionData
from tasks.image_compression.losses import DISTORTIONS, RateDistortionLoss
from tasks.image_compression.models import Codec
from tasks.image_compression.perception import DEFAULT_LAYERS

PERCEPTION_KEYS = {"layers", "mode", "kernel", "sigma"}


@dataclass
class CompressionOptions:
    lmbda: float = 0.0067
    distortion: str = "mse"
    beta: float = 0.0
    perception: dict = field(default_factory=lambda: {"layers": list(DEFAULT_LAYERS), "mode": "channels",
                                                      "kernel": "gaussian", "sigma": None})
    classifier: Any = "embedded"
    aux_lr: float = 1e-3
    min_lr_ratio: float = 0.01
    cost_size: list = field(default_factory=lambda: [512, 768])
    jpeg_qualities: list = field(default_factory=lambda: list(JPEG_QUALITIES))
    webp_qualities: list = field(default_factory=lambda: list(WEBP_QUALITIES))
    curve: list = field(default_factory=list)
    side_by_side: int = 2
    downstream: bool = True

    def __post_init__(self):
        if not self.lmbda > 0:
            raise ConfigError(f"image_compression.lmbda: expected a positive number, got {self.lmbda!r}")
        if self.distortion not in DISTORTIONS:
            raise ConfigError(f"image_compression.distortion: expected one of {DISTORTIONS}, got {self.distortion!r}")
        if self.beta < 0:
            raise ConfigError(f"image_compression.beta: expected >= 0, got {self.beta!r}")
        unknown = set(self.perception) - PERCEPTION_KEYS
        if unknown:
            raise ConfigError(f"image_compression.perception.{sorted(unknown)[0]}: unknown key; takes "
                              f"{', '.join(sorted(PERCEPTION_KEYS))}")
        if len(self.cost_size) != 2 or any(int(v) < 16 for v in self.cost_size):
            raise ConfigError(f"image_compression.cost_size: expected [H, W], got {self.cost_size!r}")
        for key in ("jpeg_qualities", "webp_qualities"):
            values = getattr(self, key)
            if len(values) < 2 or any(not isinstance(q, int) or not 0 <= q <= 100 for q in values):
                raise ConfigError(f"image_compression.{key}: expected >= 2 qualities in 0..100, got {values!r}")
        for path in self.curve:
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"image_compression.curve: checkpoint not found: {path}")


@TASKS.register("image_compression")
class ImageCompressionTask(Task):
    name = "image_compression"
    table_metrics = ("bpp", "psnr", "ms_ssim_db", "accuracy", "jpeg_saving")
    primary_metric = "rd_cost"
    higher_is_better = False
    Options = CompressionOptions
    collate = None

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self._classifier: nn.Module | None = None
        self._loss: RateDistortionLoss | None = None

    # -- components ------------------------------------------------------------------------------------
    def data(self) -> CompressionData:
        section = self.cfg.get("data") or {"name": "compression_embedded"}
        data = DATASETS.build(section, "data")
        data.input_shape = (3, *(int(v) for v in self.options.cost_size))  # what costs and profiles are taken at
        return data

    def build_context(self, data: CompressionData) -> dict[str, Any]:
        return {"cost_size": [int(v) for v in self.options.cost_size]}

    def space(self, data: CompressionData) -> SearchSpace:
        section = self.cfg.get("space") or {"name": "codec"}
        if "cost_size" in section:
            raise ConfigError("space.cost_size: set it once, in image_compression.cost_size")
        from core.engine.registry import SPACES

        return SPACES.build(section, "space", **self.build_context(data))

    def example_input(self, data: CompressionData) -> torch.Tensor:
        return torch.zeros(1, 3, *(int(v) for v in self.options.cost_size))

    def baseline(self, name: str, space: SearchSpace, data: CompressionData, searched: Arch | None = None) -> Arch:
        return space.baseline(name)

    def classifier(self, data: CompressionData, progress: bool = False) -> nn.Module:
        """phi / the downstream model (trained once for the embedded default)."""
        if self._classifier is None:
            from tasks.image_compression.downstream import load_classifier

            self._classifier = load_classifier(self.options.classifier, data.downstream, progress)
        return self._classifier

    def companions(self, model: nn.Module, data: CompressionData) -> dict[str, nn.Module]:
        return {"classifier": self.classifier(data)} if self.options.beta > 0 else {}

    def make_loss(self, data: CompressionData, progress: bool = False) -> RateDistortionLoss:
        if self._loss is None:
            perception = None
            if self.options.beta > 0:
                from tasks.image_compression.perception import PerceptionConsistency

                settings = {"layers": list(DEFAULT_LAYERS), **self.options.perception}
                try:
                    perception = PerceptionConsistency(self.classifier(data, progress), **settings)
                except (KeyError, ValueError) as err:
                    raise ConfigError(f"image_compression.perception: {err.args[0] if err.args else err}") from None
            self._loss = RateDistortionLoss(self.options.lmbda, self.options.distortion, self.options.beta, perception)
        return self._loss

    # -- the task contract ---------------------------------------------------------------------------
    def trainable(self, model: nn.Module, data: CompressionData) -> nn.Module:
        """The codec itself; its loss (with the perception term's classifier) is built here from the data."""
        self.make_loss(data)
        return model

    def loss(self, model: Codec, batch: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one batch of crops (estimated rate; the bitstream is for `score`)."""
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self._loss is None:
            raise RuntimeError("loss: call make_loss(data) first (it needs the data for the classifier)")
        return self._loss(model(x), x)

    @torch.no_grad()
    def score(self, model: Codec, loader: DataLoader | Any) -> dict[str, float]:
        """Real-bitstream metrics over the images of `loader` (or a dataset): bpp, PSNR, MS-SSIM and the
        rate-distortion cost `bpp + lambda * 255^2 * MSE` on those bits (`rd_cost`, the primary metric)."""
        from tasks.image_compression.evaluate import evaluate_images, mean_row

        dataset = getattr(loader, "dataset", loader)
        if not model.ready:
            model.update()
        rows, _ = evaluate_images(model, dataset)
        out = mean_row(rows)
        mse = 255.0 ** 2 * 10 ** (-out["psnr"] / 10) if math.isfinite(out["psnr"]) else 0.0
        out["rd_cost"] = out["bpp"] + self.options.lmbda * mse
        return out

    def train(self, model: Codec, data: CompressionData, run_dir: Path, progress: bool = True) -> dict[str, float]:
        from tasks.image_compression.train import fit_codec

        cfg = self.cfg["train"]
        steps = int(cfg["epochs"]) * max(1, math.ceil(len(data.train) / int(cfg["batch_size"])))
        fit_codec(model, data.train, self.make_loss(data, progress), steps, batch_size=int(cfg["batch_size"]),
                  lr=float(cfg["lr"]), aux_lr=self.options.aux_lr, min_lr_ratio=self.options.min_lr_ratio,
                  grad_clip=float(cfg["grad_clip"]), seed=int(self.cfg["seed"]), run_dir=run_dir,
                  progress=progress, accelerator=cfg["accelerator"], devices=cfg["devices"],
                  num_workers=int(cfg["num_workers"]))
        return self.score(model, data.val)

    def _curve_models(self, space: SearchSpace) -> list[Codec]:
        from core.engine.runs import load_checkpoint

        models = []
        for path in self.options.curve:
            payload = load_checkpoint(Path(path).expanduser())
            if payload.get("format") != "archforge-model-1" or "arch" not in payload:
                raise ConfigError(f"image_compression.curve: {path} is not an archforge model checkpoint")
            model = space.build(Arch(payload["arch"]))
            model.load_state_dict(payload["state_dict"])
            models.append(model.eval())
        return models

    @torch.no_grad()
    def test(self, model: Codec, data: CompressionData, run_dir: Path | None = None) -> dict[str, float]:
        """The codec on the test images through its bitstream, JPEG and WebP sweeps on the same images, the
        downstream classifier on decoded images, curves (PNG) and reconstructions side by side."""
        from core.engine.report import write_csv
        from core.engine.runs import write_json
        from tasks.image_compression.evaluate import (Curve, closest_by_rate, compare, downstream, evaluate_images,
                                                      mean_row, measure_curve, rate_saving_at)
        from tasks.image_compression.metrics import psnr_uint8
        from tasks.image_compression.report import curve_plot, side_by_side

        model.eval()
        if not model.ready:
            model.update()
        images, names = data.test, getattr(data.test, "names", None)
        rows, decoded = evaluate_images(model, images, names, keep=self.options.side_by_side)
        out = mean_row(rows)
        labelled = data.downstream.test if (self.options.downstream and data.downstream is not None) else None
        classifier = self.classifier(data) if labelled is not None else None
        if classifier is not None:
            result = downstream(model, classifier, labelled)
            out.update(accuracy=result["accuracy"], acc_bpp=result["bpp"],
                       accuracy_original=downstream(None, classifier, labelled)["accuracy"])
        jpeg = measure_curve("JPEG", sweep("jpeg", tuple(self.options.jpeg_qualities)), images, classifier, labelled,
                             [{"quality": q} for q in self.options.jpeg_qualities])
        webp = measure_curve("WebP", sweep("webp", tuple(self.options.webp_qualities)), images, classifier, labelled,
                             [{"quality": q} for q in self.options.webp_qualities])
        out["jpeg_saving"] = rate_saving_at(jpeg, out["bpp"], out["psnr"])
        out["webp_saving"] = rate_saving_at(webp, out["bpp"], out["psnr"])
        ours = Curve("ours", [dict(out)])
        extra = self._curve_models(self.space(data)) if self.options.curve else []
        if extra:
            ours = measure_curve("ours", [model, *extra], images, classifier, labelled)
            for prefix, anchor in (("jpeg", jpeg), ("webp", webp)):
                out.update({f"{k}_{prefix}": v for k, v in compare(anchor, ours).items()})
        if run_dir is None:
            return out
        run_dir = Path(run_dir)
        write_csv(run_dir / "compression_metrics.csv", rows, list(rows[0]))
        write_json(run_dir / "curves.json", {c.label: c.points for c in (ours, jpeg, webp)})
        curve_plot(run_dir / "rd_psnr.png", [ours, jpeg, webp], "psnr", "PSNR (dB, 8-bit RGB)",
                   f"rate-distortion on {len(images)} test images")
        curve_plot(run_dir / "rd_ms_ssim.png", [ours, jpeg, webp], "ms_ssim_db", "MS-SSIM (dB)",
                   f"rate-distortion on {len(images)} test images")
        if classifier is not None:
            curve_plot(run_dir / "rate_accuracy.png", [ours, jpeg, webp], "accuracy", "top-1 of the classifier",
                       f"rate-accuracy on {len(labelled)} labelled images", x="acc_bpp")
        jpegs, webps = sweep("jpeg", tuple(self.options.jpeg_qualities)), sweep("webp", tuple(self.options.webp_qualities))
        for i, ours_image in enumerate(decoded):
            original, row = images[i], rows[i]
            panels = [("original", original), (f"ours {row['bpp']:.3f} bpp, {row['psnr']:.2f} dB", ours_image)]
            for codecs in (jpegs, webps):
                codec, image, bpp = closest_by_rate(codecs, original, row["bpp"])
                panels.append((f"{codec.label} {bpp:.3f} bpp, {psnr_uint8(original, image):.2f} dB", image))
            side_by_side(run_dir / "side_by_side" / f"{row['image']}.png", panels, f"{row['image']} at matched bpp")
        return out


__all__ = ["ImageCompressionTask", "CompressionOptions"]
