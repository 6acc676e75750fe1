"""The super-resolution task: L1 training with Lightning, Y-channel PSNR/SSIM testing with basicsr.

Config section `super_resolution:` (the task's options):

- `scale` (2, 3, 4): passed to the data and the space.
- `cost_output` [H, W]: the output size params/MACs/latency are reported at
  (default [720, 1280], the efficient-SR convention: MACs to make a 1280x720 image).
- `side_by_side`: how many test images of each test set get a
  `bicubic | ours | HR` picture (PSNR on each panel, and a zoomed crop of
  the region where bicubic errs most underneath).
- `save_images`: write every SR output as PNG.
- `msrresnet` {num_feat, num_block}: the `msrresnet` baseline's size.

Baselines (`retrain.baselines`): `bicubic`; `msrresnet` (the size above);
`msrresnet_budget`, the largest MSRResNet within the objective's `macs <= X`
(at most the limit: it can have fewer MACs than a searched network that
went over it); `msrresnet_matched`, the MSRResNet of the space's width with
the fewest MACs at or above the searched network's (the "equal MACs"
comparison: never fewer MACs than the searched network).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from core.engine.data import DataSplits
from core.engine.registry import DATASETS, TASKS, ConfigError
from core.task import Task, batches_on
from core.api import Arch, SearchSpace
from tasks.super_resolution._basicsr import imresize, imwrite
from tasks.super_resolution.metrics import psnr_y, ssim_y, to_image
from tasks.super_resolution.space import msrresnet_budget

BASELINES = ("bicubic", "msrresnet", "msrresnet_budget", "msrresnet_matched")


@dataclass
class SROptions:
    scale: int = 2
    cost_output: list = field(default_factory=lambda: [720, 1280])
    side_by_side: int = 3
    save_images: bool = True
    msrresnet: dict = field(default_factory=lambda: {"num_feat": 16, "num_block": 2})

    def __post_init__(self):
        if self.scale not in (2, 3, 4):
            raise ConfigError(f"super_resolution.scale: expected 2, 3 or 4, got {self.scale!r}")
        if len(self.cost_output) != 2 or any(int(v) % self.scale for v in self.cost_output):
            raise ConfigError(f"super_resolution.cost_output: expected [H, W] divisible by the scale "
                              f"{self.scale}, got {self.cost_output!r}")
        if set(self.msrresnet) != {"num_feat", "num_block"}:
            raise ConfigError(f"super_resolution.msrresnet: expected {{num_feat, num_block}}, got {self.msrresnet!r}")


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(output, target)


def _labelled(panel: np.ndarray, text: str, height: int = 14) -> np.ndarray:
    """`panel` under a black strip holding `text` in white."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (panel.shape[1], height), (0, 0, 0))
    ImageDraw.Draw(strip).text((2, 1), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.concatenate([np.asarray(strip, dtype=np.uint8), panel], axis=0)


def _worst_window(error: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the `size` x `size` window with the largest summed error."""
    pooled = F.avg_pool2d(error[None, None], size, stride=max(1, size // 4))[0, 0]
    index = int(torch.argmax(pooled))
    stride = max(1, size // 4)
    return (index // pooled.shape[1]) * stride, (index % pooled.shape[1]) * stride


def side_by_side(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int, gap: int = 4,
                 zoom_fraction: float = 0.25) -> np.ndarray:
    """`bicubic | ours | HR` as one 8-bit BGR image: each panel labelled with its Y-PSNR, and below it the same
    crop (`zoom_fraction` of the shorter side, where bicubic's error is largest) enlarged to the panel width,
    so a x2 difference is visible. Bicubic by MATLAB-compatible imresize."""
    bicubic = imresize(lr.detach().float().cpu(), scale).clamp(0, 1)
    h = min(t.shape[1] for t in (bicubic, sr, hr))
    w = min(t.shape[2] for t in (bicubic, sr, hr))
    tensors = [t[:, :h, :w].detach().float().cpu() for t in (bicubic, sr, hr)]
    labels = [f"bicubic {psnr_y(tensors[0], tensors[2], scale):.2f} dB",
              f"ours {psnr_y(tensors[1], tensors[2], scale):.2f} dB", "HR"]
    size = max(8, int(min(h, w) * zoom_fraction))
    top, left = _worst_window((tensors[0] - tensors[2]).abs().mean(0), size)
    factor = max(1, w // size)
    columns = []
    for tensor, label in zip(tensors, labels):
        full = to_image(tensor)
        crop = full[top:top + size, left:left + size]
        crop = np.repeat(np.repeat(crop, factor, axis=0), factor, axis=1)
        pad = np.zeros((crop.shape[0], max(0, w - crop.shape[1]), 3), np.uint8)
        crop = np.concatenate([crop, pad], axis=1)[:, :w]
        columns.append(np.concatenate([_labelled(full, label), np.full((gap, w, 3), 255, np.uint8),
                                       _labelled(crop, f"zoom x{factor}")], axis=0))
    white = np.full((columns[0].shape[0], gap, 3), 255, np.uint8)
    row = []
    for c in columns:
        row += [c, white]
    return np.concatenate(row[:-1], axis=1)


@TASKS.register("super_resolution")
class SuperResolutionTask(Task):
    name = "super_resolution"
    primary_metric = "psnr"
    metrics = ("psnr", "ssim")
    table_metrics = ("psnr", "ssim")
    Options = SROptions
    model_options = ("scale",)
    #: why a derived network can cost more than the MACs limit (printed after a search when it does)
    constraint_note = "; to stay under the limit, set the search's target below it"

    @property
    def scale(self) -> int:
        return self.options.scale

    # -- components ------------------------------------------------------------------------------
    def data(self) -> DataSplits:
        section = self.cfg.get("data")
        if not section:
            raise ConfigError("data: missing section; e.g. data: {name: sr_embedded}")
        if "scale" in section and section["scale"] != self.scale:
            raise ConfigError(f"data.scale: {section['scale']!r} differs from super_resolution.scale={self.scale}; "
                              "set the scale once, in super_resolution.scale")
        splits = DATASETS.build({k: v for k, v in section.items() if k != "scale"}, "data", scale=self.scale)
        splits.input_shape = tuple(self.example_input(splits).shape[1:])  # the LR input at the cost_output size
        return splits

    def build_context(self, data: DataSplits) -> dict[str, Any]:
        return {"scale": self.scale, "cost_output": [int(v) for v in self.options.cost_output]}

    def space(self, data: DataSplits) -> SearchSpace:
        section = self.cfg.get("space") or {}
        if "scale" in section and section["scale"] != self.scale:
            raise ConfigError(f"space.scale: {section['scale']!r} differs from super_resolution.scale={self.scale}")
        if "cost_output" in section:
            raise ConfigError("space.cost_output: set it once, in super_resolution.cost_output")
        return super().space(data)

    def example_input(self, data: DataSplits) -> torch.Tensor:
        h, w = (int(v) // self.scale for v in self.options.cost_output)
        return torch.zeros(1, 3, h, w)

    def describe_test(self, data: DataSplits) -> str:
        names = list(getattr(data.test, "names", []))
        sets = list(dict.fromkeys(n.split("/", 1)[0] if "/" in n else "test" for n in names))
        counts = ", ".join(f"{s} ({sum(1 for n in names if n.startswith(s + '/'))} images)" for s in sets)
        return f"{data.name}: {counts or f'{len(data.test)} images'}"

    def baseline(self, name: str, space: SearchSpace, data: DataSplits, searched: Arch | None = None) -> Arch:
        if name == "bicubic":
            return Arch({"baseline": "bicubic"})
        if name == "msrresnet":
            return Arch({"baseline": "msrresnet", **{k: int(v) for k, v in self.options.msrresnet.items()}})
        if name == "msrresnet_budget":
            from core.objective import Constraint

            bounds = [Constraint.parse(c).bound for c in self.cfg.get("objective", {}).get("constraints", [])
                      if Constraint.parse(c).metric == "macs"]
            if not bounds:
                raise ConfigError("retrain.baselines: 'msrresnet_budget' needs a 'macs <= N' constraint in "
                                  "objective.constraints")
            return msrresnet_budget(self.scale, min(bounds), tuple(int(v) for v in self.options.cost_output))
        if name == "msrresnet_matched":
            reference = searched if searched is not None else space.default()
            if reference.get("baseline") == "bicubic":
                raise ConfigError("retrain.baselines: 'msrresnet_matched' needs a network with weights to match")
            out_hw = tuple(int(v) for v in self.options.cost_output)
            macs = space.macs(reference, out_hw) if hasattr(space, "macs") else None
            if macs is None:
                raise ConfigError(f"retrain.baselines: 'msrresnet_matched' needs a trilevel_sr space, not "
                                  f"{type(space).__name__}")
            width = getattr(space, "num_feat", None)
            try:
                return msrresnet_budget(self.scale, macs, out_hw, at_least=True,
                                        feats=(width,) if width else tuple(range(8, 65, 4)),
                                        blocks=tuple(range(1, 65)))
            except ValueError as err:
                raise ConfigError(f"retrain.baselines: msrresnet_matched: {err}") from None
        raise ConfigError(f"retrain.baselines: unknown baseline {name!r}; known: {', '.join(BASELINES)}")

    # -- the task contract ------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """L1 between the super-resolved patch and the HR patch (basicsr's pixel loss)."""
        lr, hr = batch
        loss = F.l1_loss(model(lr), hr)
        return loss, {"n": len(lr)}

    @torch.no_grad()
    def score(self, model: nn.Module, loader) -> dict[str, float]:
        """Mean Y-channel PSNR and SSIM (basicsr, `scale` pixels cropped at the border) over the images."""
        was = model.training
        model.eval()
        psnrs, ssims = [], []
        for lr, hr in batches_on(loader, model):
            for o, h in zip(model(lr).clamp(0, 1), hr):
                psnrs.append(psnr_y(o, h, self.scale))
                ssims.append(ssim_y(o, h, self.scale))
        model.train(was)
        return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}

    def loader(self, dataset, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0,
               drop_last: bool = False):
        """Validation and test images differ in size, so they are scored one at a time."""
        if not shuffle:
            batch_size = 1
        return super().loader(dataset, batch_size, shuffle, seed, num_workers, drop_last)

    # -- training ---------------------------------------------------------------------------------
    def batch_metrics(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        values = [psnr_y(o.clamp(0, 1), t, self.scale) for o, t in zip(output, target)]
        return {"psnr": float(np.mean(values))}

    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        """L1 training with Lightning (`train` section: epochs, batch_size, optimizer adam, lr, scheduler)."""
        from core.engine.lightning import SupervisedModule, make_trainer

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if not any(p.requires_grad for p in model.parameters()):
            return {}  # bicubic: nothing to train
        cfg = self.cfg["train"]
        random.seed(self.cfg["seed"])  # basicsr's crops and flips
        g = torch.Generator().manual_seed(self.cfg["seed"])
        train_loader = DataLoader(data.train, batch_size=cfg["batch_size"], shuffle=True, generator=g,
                                  num_workers=cfg["num_workers"])
        val_loader = DataLoader(data.val, batch_size=1, shuffle=False)
        module = SupervisedModule(model, l1_loss, self.batch_metrics, cfg)
        trainer = make_trainer(cfg, run_dir, progress=progress)
        trainer.fit(module, train_loader, val_loader)
        return {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    # -- testing -------------------------------------------------------------------------------------
    @torch.no_grad()
    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        """Per image: SR PNG, Y-PSNR/SSIM (CSV), and for the first `side_by_side` images of each test set a
        comparison picture. Returns pooled `psnr`/`ssim` and one `<set>_psnr`/`<set>_ssim` per test set."""
        from tqdm.auto import tqdm

        from core.engine.report import write_csv
        from core.supernet.spos import progress_enabled

        model.eval()
        ds, rows = data.test, []
        names = getattr(ds, "names", [str(i) for i in range(len(ds))])
        drawn: dict[str, int] = {}
        for i in tqdm(range(len(ds)), desc="test", unit="image", disable=not progress_enabled(True),
                      dynamic_ncols=True):
            lr, hr = ds[i]
            sr = model(lr[None])[0].clamp(0, 1)
            name = names[i]
            set_name, image = name.split("/", 1) if "/" in name else ("test", name)
            rows.append({"set": set_name, "image": image, "psnr": psnr_y(sr, hr, self.scale),
                         "ssim": ssim_y(sr, hr, self.scale)})
            if run_dir is not None:
                if self.options.save_images:
                    imwrite(to_image(sr), str(Path(run_dir) / "sr_images" / set_name / f"{image}.png"))
                if drawn.get(set_name, 0) < self.options.side_by_side:
                    drawn[set_name] = drawn.get(set_name, 0) + 1
                    imwrite(side_by_side(lr, sr, hr, self.scale),
                            str(Path(run_dir) / "side_by_side" / f"{set_name}_{image}.png"))
        if run_dir is not None:
            write_csv(Path(run_dir) / "sr_metrics.csv", rows, ["set", "image", "psnr", "ssim"])
        out = {"psnr": float(np.mean([r["psnr"] for r in rows])), "ssim": float(np.mean([r["ssim"] for r in rows]))}
        for s in dict.fromkeys(r["set"] for r in rows):
            out[f"{s}_psnr"] = float(np.mean([r["psnr"] for r in rows if r["set"] == s]))
            out[f"{s}_ssim"] = float(np.mean([r["ssim"] for r in rows if r["set"] == s]))
        return out


def train_steps(model: nn.Module, dataset, steps: int, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                min_lr_ratio: float = 0.01, progress: bool = False, desc: str = "train",
                device: str | torch.device = "cpu") -> list[float]:
    """A plain L1 training loop (Adam, cosine to `min_lr_ratio * lr` over `steps`) for tests and benchmarks,
    where building a Lightning Trainer costs more than the training; returns the per-step losses.
    The model is moved to `device` and stays there."""
    from tqdm.auto import tqdm

    from core.engine.progress import progress_enabled

    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return []
    random.seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * min_lr_ratio)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) >= batch_size,
                        generator=torch.Generator().manual_seed(seed))
    losses: list[float] = []
    model.train()
    bar = tqdm(total=steps, desc=desc, unit="step", disable=not progress_enabled(progress), dynamic_ncols=True)
    while len(losses) < steps:
        for lr_img, hr_img in loader:
            loss = F.l1_loss(model(lr_img.to(device)), hr_img.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            if len(losses) >= steps:
                break
    bar.close()
    model.eval()
    return losses


__all__ = ["BASELINES", "SROptions", "SuperResolutionTask", "l1_loss", "side_by_side", "train_steps"]
