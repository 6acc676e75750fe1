"""The image translation task: pix2pix and CycleGAN training, portable GAN distillation, PU-GAN, U-Net search.

Config section `image_translation:` (the task's options, `TranslationOptions`):

- `mode`: `pix2pix` (paired data: conditional PatchGAN + lambda_l1 x L1) or
  `cyclegan` (two generators and discriminators, cycle + identity terms).
- The hand-designed generator the baselines build: `generator` (`unet`:
  pix2pix's U-Net of `num_downs` levels; `resnet`: CycleGAN's ResNet of
  `n_blocks` blocks) at width `ngf`, `norm` (`batch` as pix2pix, `instance` as
  CycleGAN), `dropout`; `student_width` (1/2 or 1/4) sizes the student.
- The discriminator: PatchGAN with `ndf`, `n_layers_d`.
- `gan_loss`: `vanilla` (pix2pix), `lsgan` (CycleGAN), `pu` or `pu_lsgan`
  (PU-GAN), with `prior` {init, mode: stepped|fixed, every, increment, cap}.
- `lambda_l1` (100), `lambda_cycle` (10), `lambda_identity` (0.5), `beta1`
  (0.5), `decay_fraction` (0.5), `max_steps` (a step budget instead of
  `train.epochs`); the learning rate and batch size are `train.lr` and
  `train.batch_size`.
- `distill` (portable GAN distillation of the model being trained from a
  teacher): {teacher: PATH to a `model.pt` this task trained, terms: [...]
  (default `default_terms`), adversarial_weight (1), target_weight (default
  lambda_l1; paired data only), teacher_as_real (true), real_weight (1), ndf
  (the student discriminator's width, default `ndf`), gan_loss (default the
  task's)}.
- `metrics`: {inception_weights: PATH (FID/KID), feature_extractor:
  photo_classifier | {name: torchvision, arch, weights}, kid_subset_size: 50}.
- `grid` (test images in the grid), `save_images`, `latency` (measure it in
  the cost table).

Baselines (`train.arch` / `retrain.baselines` names): `teacher` and
`student` (the hand design at `ngf` and `ngf x student_width`), `unet`,
`unet_student`, `resnet`, `resnet_student`, and `unet_budget` (pix2pix's
U-Net scaled to the largest width within the objective's `macs <= N`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from core.distill.gan_losses import GAN_MODES, GANLoss, PriorSchedule
from core.distill.portable_gan import PortableGANDistillation
from core.engine.data import DataSplits
from core.engine.registry import TASKS, ConfigError
from core.task import Task
from core.api import Arch, SearchSpace
from tasks.image_translation.models import NORMS, PatchDiscriminator, init_gan_weights, scaled
from tasks.image_translation.space import UNetTranslatorSpace, resnet_arch, unet_arch, unet_budget

BASELINES = ("teacher", "student", "unet", "unet_student", "resnet", "resnet_student", "unet_budget")
DISTILL_KEYS = ("teacher", "terms", "adversarial_weight", "target_weight", "teacher_as_real", "real_weight", "ndf",
                "gan_loss")
METRIC_KEYS = ("inception_weights", "feature_extractor", "kid_subset_size")


@dataclass
class TranslationOptions:
    mode: str = "pix2pix"
    generator: str = "unet"
    ngf: int = 16
    num_downs: int = 6
    n_blocks: int = 9
    norm: str = "batch"
    dropout: bool = True
    student_width: float = 0.25
    ndf: int = 16
    n_layers_d: int = 3
    gan_loss: str = "vanilla"
    prior: dict = field(default_factory=dict)
    lambda_l1: float = 100.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    beta1: float = 0.5
    decay_fraction: float = 0.5
    max_steps: int | None = None
    distill: dict | None = None
    metrics: dict = field(default_factory=dict)
    grid: int = 8
    save_images: bool = False
    latency: bool = True

    def __post_init__(self):
        checks = [("mode", self.mode, ("pix2pix", "cyclegan")), ("generator", self.generator, ("unet", "resnet")),
                  ("norm", self.norm, NORMS), ("gan_loss", self.gan_loss, GAN_MODES)]
        for key, value, known in checks:
            if value not in known:
                raise ConfigError(f"image_translation.{key}: expected one of {', '.join(known)}, got {value!r}")
        if not 0 < self.student_width <= 1:
            raise ConfigError(f"image_translation.student_width: expected a number in (0, 1], got {self.student_width!r}")
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"image_translation.decay_fraction: expected a number in [0, 1], got {self.decay_fraction!r}")
        try:
            PriorSchedule(**self.prior)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"image_translation.prior: {err}") from None
        for section, known in (("distill", DISTILL_KEYS), ("metrics", METRIC_KEYS)):
            value = getattr(self, section) or {}
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise ConfigError(f"image_translation.{section}.{unknown[0]}: unknown key; takes {', '.join(known)}")
        if self.distill and self.distill.get("gan_loss", self.gan_loss) not in GAN_MODES:
            raise ConfigError(f"image_translation.distill.gan_loss: expected one of {', '.join(GAN_MODES)}, "
                              f"got {self.distill['gan_loss']!r}")


def default_terms(arch: Arch | dict) -> list[dict[str, Any]]:
    """Distillation terms for a hand-designed generator pair (teacher and student of one design).

    L1 between the outputs (weight 50: the MindSpore CycleGAN `kd` option's
    lambda_A x 5, half the pix2pix lambda_L1), and on two intermediate maps (a
    U-Net's middle encoder level `downs.{D//2}` and its decoder at a quarter of
    the resolution `ups.2`; a ResNet's middle and last residual blocks) an L1
    feature term (weight 10) and a Gram style term (weight 1e4; the
    GAN-Slimming reimplementation uses 1e5 on discriminator features), each
    through a learnable 1x1 adapter from the student's channels to the
    teacher's. The paper's weights are not known (METHODS.md 3.4); these put
    each term within an order of magnitude of the others at the start of
    training on the embedded data."""
    arch = dict(arch)
    terms = [{"loss": "l1", "student": "", "teacher": "", "weight": 50.0}]
    if arch.get("baseline") == "unet":
        d = int(arch["num_downs"])
        taps = [f"downs.{d // 2}", "ups.2"] if d >= 3 else [f"downs.{d - 1}"]
    elif arch.get("baseline") == "resnet":
        n = int(arch["n_blocks"])
        taps = [f"blocks.{n // 2}", f"blocks.{n - 1}"]
    else:
        return terms
    for tap in taps:
        terms.append({"loss": "hint", "student": tap, "teacher": tap, "weight": 10.0, "distance": "l1"})
        terms.append({"loss": "gram", "student": tap, "teacher": tap, "weight": 1.0e4})
    return terms


@TASKS.register("image_translation")
class ImageTranslationTask(Task):
    name = "image_translation"
    primary_metric = "psnr"
    table_metrics = ("psnr", "ssim", "ms_ssim", "fid", "kid", "fd_photo_classifier", "kd_photo_classifier")
    Options = TranslationOptions
    collate = None

    # -- components ----------------------------------------------------------------------------
    def data(self) -> DataSplits:
        splits = super().data()
        if self.options.mode == "pix2pix" and not getattr(splits.train, "paired", True):
            raise ConfigError(f"image_translation.mode: pix2pix needs paired training data and {splits.name} is "
                              "unpaired; use mode: cyclegan")
        return splits

    def build_context(self, data: DataSplits) -> dict[str, Any]:
        return {"in_channels": int(data.train.in_channels), "out_channels": int(data.train.out_channels),
                "image_size": int(data.input_shape[-1]), "norm": self.options.norm}

    def space(self, data: DataSplits) -> SearchSpace:
        if not self.cfg.get("space"):
            self.cfg["space"] = {"name": "unet_translator"}
        return super().space(data)

    def example_input(self, data: DataSplits) -> torch.Tensor:
        return torch.zeros(1, *data.input_shape)

    def hand_design(self, width: float = 1.0, kind: str | None = None) -> Arch:
        o = self.options
        kind = kind or o.generator
        ngf = scaled(o.ngf, width)
        return unet_arch(ngf, o.num_downs, o.dropout) if kind == "unet" else resnet_arch(ngf, o.n_blocks)

    def baseline(self, name: str, space: SearchSpace, data: DataSplits, searched: Arch | None = None) -> Arch:
        o = self.options
        table = {"teacher": (1.0, None), "student": (o.student_width, None), "unet": (1.0, "unet"),
                 "unet_student": (o.student_width, "unet"), "resnet": (1.0, "resnet"),
                 "resnet_student": (o.student_width, "resnet")}
        if name in table:
            return space.check(self.hand_design(*table[name]))
        if name == "unet_budget":
            from core.objective import Constraint

            bounds = [Constraint.parse(c).bound for c in self.cfg.get("objective", {}).get("constraints", [])
                      if Constraint.parse(c).metric == "macs"]
            if not bounds:
                raise ConfigError("retrain.baselines: 'unet_budget' needs a 'macs <= N' constraint in "
                                  "objective.constraints")
            return unet_budget(space, min(bounds), o.num_downs, o.dropout)
        raise ConfigError(f"retrain.baselines: unknown baseline {name!r}; known: {', '.join(BASELINES)}")

    def discriminator(self, data: DataSplits, ndf: int | None = None, conditional: bool | None = None) -> nn.Module:
        """A PatchGAN for the output domain (conditional on the input in pix2pix mode)."""
        o = self.options
        conditional = o.mode == "pix2pix" if conditional is None else conditional
        channels = data.train.out_channels + (data.train.in_channels if conditional else 0)
        return init_gan_weights(PatchDiscriminator(channels, ndf or o.ndf, o.n_layers_d, o.norm))

    def gan_loss(self, mode: str | None = None) -> GANLoss:
        return GANLoss(mode or self.options.gan_loss, self.options.prior)

    # -- the task contract -------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The regression part every recipe shares: L1 of the output to the paired target."""
        x, y = batch
        loss = F.l1_loss(model(x), y)
        return loss, {"l1": float(loss.detach())}

    def score(self, model: nn.Module, loader) -> dict[str, float]:
        from tasks.image_translation.metrics import score_generator

        return score_generator(model, loader.dataset, loader.batch_size or 16)

    def companions(self, model: nn.Module, data: DataSplits) -> dict[str, nn.Module]:
        """The modules final training adds: discriminators, CycleGAN's second generator, the teacher."""
        o = self.options
        if o.distill and o.distill.get("teacher"):
            return {"teacher": self.load_teacher(data),
                    "student_discriminator": self.discriminator(data, o.distill.get("ndf"))}
        if o.mode == "pix2pix":
            return {"discriminator": self.discriminator(data)}
        reverse = UNetTranslatorSpace(data.train.out_channels, data.train.in_channels, int(data.input_shape[-1]),
                                      norm=o.norm)
        return {"generator_b": reverse.build(self.hand_design()), "discriminator_a": self.discriminator(data),
                "discriminator_b": init_gan_weights(PatchDiscriminator(data.train.in_channels, o.ndf, o.n_layers_d,
                                                                       o.norm))}

    def load_teacher(self, data: DataSplits) -> nn.Module:
        """The teacher generator from `distill.teacher` (a `model.pt` this task wrote; weights-only load)."""
        from core.engine.runs import load_checkpoint

        path = Path(self.options.distill["teacher"]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"image_translation.distill.teacher: checkpoint not found: {path}")
        payload = load_checkpoint(path)
        if payload.get("format") != "archforge-model-1" or "arch" not in payload:
            raise ConfigError(f"image_translation.distill.teacher: {path} is not an archforge model checkpoint")
        norm = ((payload.get("config") or {}).get(self.name) or {}).get("norm", self.options.norm)
        space = UNetTranslatorSpace(**{**self.build_context(data), "norm": norm})
        teacher = space.build(Arch(payload["arch"]))
        try:
            teacher.load_state_dict(payload["state_dict"])
        except RuntimeError as err:
            raise ConfigError(f"image_translation.distill.teacher: {path} does not fit these data's channels "
                              f"({str(err).splitlines()[0]})") from None
        return teacher.eval()

    def make_distillation(self, teacher: nn.Module, student: nn.Module, data: DataSplits,
                          teacher_arch: Arch | None = None, student_arch: Arch | None = None,
                          ) -> PortableGANDistillation:
        """Portable GAN distillation of `student` from `teacher` with the `distill` options."""
        o = self.options
        spec = dict(o.distill or {})
        terms = spec.get("terms")
        if terms is None:
            same_design = teacher_arch is not None and student_arch is not None and \
                teacher_arch.get("baseline") == student_arch.get("baseline")
            terms = default_terms(student_arch if same_design else {})
        example = self.example_input(data).expand(2, *data.input_shape).contiguous()
        conditional = o.mode == "pix2pix"
        return PortableGANDistillation(
            teacher, student, self.discriminator(data, spec.get("ndf"), conditional), terms,
            self.gan_loss(spec.get("gan_loss")), adversarial_weight=float(spec.get("adversarial_weight", 1.0)),
            target_weight=float(spec.get("target_weight", o.lambda_l1)) if conditional else 0.0,
            teacher_as_real=bool(spec.get("teacher_as_real", True)), real_weight=float(spec.get("real_weight", 1.0)),
            conditional=conditional, example_input=example)

    def recipe(self, run_dir: Path | None, progress: bool, seed: int | None = None):
        from tasks.image_translation.training import Recipe

        cfg, o = self.cfg.get("train", {}), self.options
        accelerator = cfg.get("accelerator", "cpu")
        device = "cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) \
            else "cpu"
        return Recipe(epochs=int(cfg.get("epochs", 10)), max_steps=o.max_steps, batch_size=int(cfg.get("batch_size", 8)),
                      lr=float(cfg.get("lr", 2e-4)), beta1=o.beta1, decay_fraction=o.decay_fraction,
                      lambda_l1=o.lambda_l1, lambda_cycle=o.lambda_cycle, lambda_identity=o.lambda_identity,
                      seed=int(self.cfg.get("seed", 0) if seed is None else seed), device=device, progress=progress,
                      checkpoint_dir=str(Path(run_dir) / "checkpoints") if run_dir is not None else None,
                      num_workers=int(cfg.get("num_workers", 0)))

    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        """pix2pix, CycleGAN or portable distillation (with `distill.teacher`); per-epoch checkpoints in
        `run_dir/checkpoints/`, the loss history in `run_dir/train_history.json`; returns validation metrics."""
        from core.engine.runs import write_json
        from tasks.image_translation.metrics import score_generator
        from tasks.image_translation.training import train_cyclegan, train_distillation, train_pix2pix

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe = self.recipe(run_dir, progress)
        parts = self.companions(model, data)
        if "teacher" in parts:
            teacher = parts["teacher"]
            student_arch = getattr(model, "arch", None)
            distill = self.make_distillation(teacher, model, data, getattr(teacher, "arch", None), student_arch)
            summary = train_distillation(distill, data.train, recipe, paired=getattr(data.train, "paired", True))
            distill.close()
        elif self.options.mode == "pix2pix":
            summary = train_pix2pix(model, parts["discriminator"], data.train, self.gan_loss(), recipe)
        else:
            summary = train_cyclegan(model, parts["generator_b"], parts["discriminator_a"], parts["discriminator_b"],
                                     data.train, self.gan_loss(), recipe)
        write_json(run_dir / "train_history.json", summary)
        model.cpu().eval()
        if not getattr(data.val, "paired", True):
            return {"steps": float(summary["steps"])}
        return score_generator(model, data.val)

    # -- testing -----------------------------------------------------------------------------------
    @torch.no_grad()
    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        """Per-image PSNR/SSIM (paired data), FID/KID or a labelled feature distance, a grid of
        input | teacher | output | target, and params/MACs/latency of the model (and teacher) side by side."""
        from core.engine.report import table, write_csv
        from core.engine.runs import write_json
        from tasks.image_translation.metrics import DistributionDistance, make_extractor, paired_metrics
        from tasks.image_translation.report import cost_rows, save_grid

        o = self.options
        model = model.cpu().eval()
        teacher = self.load_teacher(data) if (o.distill or {}).get("teacher") else None
        ds = data.test
        paired = getattr(ds, "paired", True)
        names = list(getattr(ds, "names", [str(i) for i in range(len(ds))]))
        extractor = make_extractor(o.metrics or {})
        distance = DistributionDistance(*extractor, int((o.metrics or {}).get("kid_subset_size", 50))) \
            if extractor else None
        rows, grid_cols = [], None
        offset = 0
        for x, y in DataLoader(ds, batch_size=16, shuffle=False):
            out = model(x)
            t_out = teacher(x) if teacher is not None else None
            batch_rows = [{"image": names[offset + i]} for i in range(len(x))]
            if paired:
                for k, v in paired_metrics(out, y).items():
                    for row, value in zip(batch_rows, v.tolist()):
                        row[k] = value
            if distance is not None:
                distance.update(out, y)
            if grid_cols is None and o.grid > 0:
                k = min(o.grid, len(x))
                grid_cols = [x[:k]] + ([t_out[:k]] if t_out is not None else []) + [out[:k], y[:k]]
            if run_dir is not None and o.save_images:
                for row, image in zip(batch_rows, out):
                    save_grid(Path(run_dir) / "images" / f"{row['image']}.png", [image[None]], pad=0)
            rows.extend(batch_rows)
            offset += len(x)
        metrics: dict[str, float] = {}
        for key in ("psnr", "ssim", "ms_ssim"):
            if rows and key in rows[0]:
                metrics[key] = float(np.mean([r[key] for r in rows]))
        if distance is not None:
            metrics.update(distance.compute())
        if run_dir is not None:
            run_dir = Path(run_dir)
            columns = ["image"] + [k for k in ("psnr", "ssim", "ms_ssim") if rows and k in rows[0]]
            write_csv(run_dir / "metrics_per_image.csv", rows, columns)
            if grid_cols is not None:
                save_grid(run_dir / "grid.png", grid_cols)
            generators = {"model": model} if teacher is None else {"teacher": teacher, "student": model}
            costs = cost_rows(generators, self.example_input(data), latency=o.latency)
            write_json(run_dir / "costs.json", costs)
            write_json(run_dir / "metrics_test.json", metrics)
            print("\n" + table(costs, ["model", "params", "macs", "latency_ms"] if o.latency else
                               ["model", "params", "macs"]), flush=True)
        return metrics


__all__ = ["ImageTranslationTask", "TranslationOptions", "default_terms", "BASELINES"]
