"""Trilevel NAS search: gamma, alpha, beta and the supernet weights in one phase.

Wu, Huang, Kumar, Sukthanker, Timofte, Van Gool, arXiv 2101.06658. What we
follow, and where from (METHODS.md section 3.2; the paper's method text was not
available to us, so the details come from the derivative code
`hanyao8/DA-NAS-SISR`, `train_search.py`, `architect.py`,
`model_search_flexible.py`):

- Relaxation: sparsestmax on gamma, alpha and beta with the radius growing
  linearly with the fraction of steps done (`r = iter / total_iters` there;
  ours reaches each choice's one-hot radius sqrt((K-1)/K) at `end_fraction`,
  see `core.space.sparsestmax`). `softmax` and `sparsemax` for comparison.
- Sorting (network level): the order term sum_paths sum_k (gamma_{k+1} - gamma_k)
  on the raw gamma along each root-to-leaf path, weight 1e-5
  (`core.space.sparsestmax.order_loss`, `order_mode: telescoping`; `hinge` is
  our stricter variant).
- Loss: L1 to HR, plus optionally L1 to a frozen teacher SR network's output
  (`teacher`, built by basicsr's `build_network` from a local checkpoint; the
  derivative code uses only a teacher, ESRGAN's RRDB_PSNR), plus a MACs term
  on E[MACs], the relaxed supernet's expected MACs at the output size `out_hw`
  (default the space's `cost_output`, 1280x720): `macs_mode: hinge` (default)
  `macs_weight * relu(E[MACs] / macs_target - 1)`, which keeps the supernet
  within the target and leaves it alone below; `linear`
  `macs_weight * E[MACs] / macs_target`, the derivative code's form, which
  pushes MACs down always; `target` `macs_weight * |E[MACs] / macs_target - 1|`,
  which also pulls a supernet below the target up to it (two-sided, as
  TF-NAS's latency target; our addition). Below the target the pull acts on
  the cell and kernel levels only (`macs_pull: cells`, default; `all` also
  pulls gamma): the cheapest way to raise E[MACs] through gamma is a path with
  a cell after the upsampler, which buys MACs at scale^2 times their LR price.
  Measured (docs/benchmarks.md, super-resolution): with `all`, 3 of 4 seeds
  derived such a path (`UC`) and lost to MSRResNet at equal MACs; with
  `cells`, 4 of 4 kept every cell at LR. Above the target the push-down acts
  on all three levels. The derivative
  code weighs supernet FLOPs by a tiny constant and doubles it when FLOPs
  exceed the range's top, halves it below its bottom, to stay within
  [100, 400] GFLOPs; we normalise by the target (so the weight is unitless)
  and adapt the same way after each epoch within `macs_band * macs_target`
  (default [0.5, 1.0] x target). The target defaults to the objective's
  `macs <= X` constraint.
- Optimisation: first order, alternating per step: an architecture step (Adam,
  lr 3e-4, betas (0.5, 0.999)) on a batch of one half of the training images, a
  weight step on the other half (a 50/50 split by image). Weights: Adam,
  lr 1e-4 halved at 25/50/75 % of the epochs. The weight step follows the
  sandwich rule: the loss of the relaxed widths plus the widest and the
  narrowest network (`max`, `min`); `warmup_epochs` train the weights only
  (widest, narrowest, one random width), the derivative code's pretraining.
- Derivation: argmax at every level (`TrilevelSupernet.derive`); with
  sparsestmax the weights are one-hot by then, so this is the network the
  supernet was computing at the end. `export()` gives it with the supernet's
  weights (search and training in one phase).

`gradient_based = True`: `archforge search` calls `fit(None, data)`, which
checkpoints to `checkpoint` after every epoch and resumes from it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from core.engine.data import DataSplits, cycle, split_indices
from core.engine.meter import StepMeter
from core.engine.registry import STRATEGIES, ConfigError
from core.engine.runs import resume_epoch_state, save_epoch_state
from core.objective import Objective
from core.space import Arch, SearchSpace
from core.space.sparsestmax import order_loss
from core.strategies.spos import _progress_enabled
from tasks.super_resolution.supernet import RELAXATIONS, TrilevelSupernet

CHECKPOINT_FORMAT = "archforge-trilevel-1"


def macs_target_from(objective: Objective | None) -> float | None:
    """The tightest `macs <= X` constraint of the objective, if any."""
    if objective is None:
        return None
    bounds = [c.bound for c in objective.constraints if c.metric == "macs" and c.op in ("<=", "<")]
    return min(bounds) if bounds else None


def load_sr_teacher(spec: dict[str, Any]) -> nn.Module:
    """A frozen teacher from a basicsr network option block plus `checkpoint` (and `param_key`, default 'params')."""
    from tasks.super_resolution._basicsr import build_network

    spec = dict(spec)
    path = spec.pop("checkpoint", None)
    key = spec.pop("param_key", "params")
    if "type" not in spec:
        raise ConfigError("strategy.teacher.type: missing; name a basicsr arch, e.g. MSRResNet")
    net = build_network(spec)
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"strategy.teacher.checkpoint: not found: {p}")
        state = torch.load(p, map_location="cpu", weights_only=True)
        net.load_state_dict(state[key] if key and key in state else state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@STRATEGIES.register("trilevel")
class TrilevelSearcher:
    """Trilevel NAS on a `trilevel_sr` space (see the module docstring). `fit(None, data) -> Arch`."""

    gradient_based = True

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None, epochs: int = 10,
                 steps_per_epoch: int | None = None, batch_size: int = 8, relaxation: str = "sparsestmax",
                 end_fraction: float = 1.0, lr: float = 1e-4, arch_lr: float = 3e-4,
                 arch_betas: tuple[float, float] = (0.5, 0.999), arch_weight_decay: float = 0.0,
                 lr_milestones: list | None = None, grad_clip: float | None = None, train_portion: float = 0.5,
                 macs_target: float | None = None, macs_weight: float = 1.0, macs_band: list | None = None,
                 macs_mode: str = "hinge", macs_pull: str = "cells",
                 order_weight: float = 1e-5, order_mode: str = "telescoping", sandwich: bool = True,
                 warmup_epochs: int = 0, teacher: dict | None = None, teacher_weight: float = 1.0,
                 hr_weight: float = 1.0, out_hw: list | None = None, checkpoint: str | None = None,
                 progress: bool = False, device: str = "cpu", log_every: int = 50):
        if relaxation not in RELAXATIONS:
            raise ConfigError(f"strategy.relaxation: expected one of {', '.join(RELAXATIONS)}, got {relaxation!r}")
        if epochs < 1:
            raise ConfigError(f"strategy.epochs: expected an integer >= 1, got {epochs!r}")
        if not 0 <= warmup_epochs < epochs:
            raise ConfigError(f"strategy.warmup_epochs: expected 0 <= warmup_epochs < epochs={epochs}, "
                              f"got {warmup_epochs!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"strategy.steps_per_epoch: expected an integer >= 1 or null, got {steps_per_epoch!r}")
        if not 0 < train_portion < 1:
            raise ConfigError(f"strategy.train_portion: expected a fraction in (0, 1), got {train_portion!r}")
        if macs_mode not in ("hinge", "linear", "target"):
            raise ConfigError(f"strategy.macs_mode: expected hinge, linear or target, got {macs_mode!r}")
        if macs_pull not in ("cells", "all"):
            raise ConfigError(f"strategy.macs_pull: expected cells or all, got {macs_pull!r}")
        if order_mode not in ("telescoping", "hinge"):
            raise ConfigError(f"strategy.order_mode: expected telescoping or hinge, got {order_mode!r}")
        band = list(macs_band or [0.5, 1.0])
        if len(band) != 2 or not 0 <= band[0] <= band[1]:
            raise ConfigError(f"strategy.macs_band: expected [low, high] fractions with low <= high, got {macs_band!r}")
        from tasks.super_resolution.space import TrilevelSpace

        if not isinstance(space, TrilevelSpace):
            raise ConfigError("strategy.name: trilevel searches a trilevel_sr space (space: {name: trilevel_sr})")
        self.space, self.seed, self.objective = space, seed, objective
        self.epochs, self.steps_per_epoch, self.batch_size = epochs, steps_per_epoch, batch_size
        self.relaxation, self.end_fraction = relaxation, end_fraction
        self.lr, self.arch_lr, self.arch_betas = lr, arch_lr, tuple(arch_betas)
        self.arch_weight_decay = arch_weight_decay
        self.lr_milestones = lr_milestones if lr_milestones is not None else \
            sorted({max(1, round(epochs * f)) for f in (0.25, 0.5, 0.75)})
        self.grad_clip, self.train_portion = grad_clip, train_portion
        self.macs_target = macs_target if macs_target is not None else macs_target_from(objective)
        self.macs_weight, self.macs_band, self.macs_mode = float(macs_weight), band, macs_mode
        self.macs_pull = macs_pull
        self.order_weight, self.order_mode = order_weight, order_mode
        self.sandwich, self.warmup_epochs = sandwich, warmup_epochs
        self.teacher_spec, self.teacher_weight, self.hr_weight = teacher, teacher_weight, hr_weight
        self.out_hw = tuple(out_hw or getattr(space, "cost_output", (720, 1280)))
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.device, self.log_every = progress, torch.device(device), log_every
        self.history: list[dict[str, Any]] = []
        self.supernet: TrilevelSupernet | None = None
        self.teacher: nn.Module | None = None
        self.arch: Arch | None = None

    # -- pieces ----------------------------------------------------------------------------------------
    def _halves(self, train) -> tuple[Any, Any]:
        """50/50 by image when the dataset can (random crops of one image stay on one side), else by item."""
        n = len(train.hrs) if hasattr(train, "subset") else len(train)
        first, second = split_indices(n, self.train_portion, self.seed, "training images")
        if hasattr(train, "subset"):
            per_half = max(1, len(train) // 2)
            return train.subset(first, per_half), train.subset(second, per_half)
        return Subset(train, first), Subset(train, second)

    def _fidelity(self, sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        loss = self.hr_weight * F.l1_loss(sr, hr)
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(lr)
            loss = loss + self.teacher_weight * F.l1_loss(sr, target)
        return loss

    def arch_loss(self, model: TrilevelSupernet, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """The architecture step's loss: fidelity + MACs term + sorting term (terms returned for logging)."""
        model.width_mode = "relaxed"
        terms = {"fidelity": self._fidelity(model(lr), lr, hr)}
        terms["macs"] = model.expected_macs(self.out_hw)
        if self.macs_target:
            ratio = terms["macs"] / self.macs_target
            penalty = {"hinge": F.relu(ratio - 1.0), "linear": ratio, "target": (ratio - 1.0).abs()}[self.macs_mode]
            if self.macs_mode == "target" and self.macs_pull == "cells" and float(ratio.detach()) < 1.0:
                penalty = 1.0 - model.expected_macs(self.out_hw, detach_gamma=True) / self.macs_target
            terms["macs_term"] = self.macs_weight * penalty
        terms["order"] = order_loss(model.arch_gamma, model.order_paths(), self.order_mode, self.order_weight)
        terms["total"] = terms["fidelity"] + terms.get("macs_term", 0.0) + terms["order"]
        return terms

    def weight_loss(self, model: TrilevelSupernet, lr: torch.Tensor, hr: torch.Tensor, warmup: bool) -> torch.Tensor:
        """The sandwich rule: relaxed + widest + narrowest (warm-up: widest + narrowest + one random)."""
        modes = ("max", "min", "random") if warmup else (("relaxed", "max", "min") if self.sandwich else ("relaxed",))
        total = 0.0
        for mode in modes:
            model.width_mode = mode
            total = total + self._fidelity(model(lr), lr, hr)
        model.width_mode = "relaxed"
        return total

    def _adapt_macs_weight(self, expected: float) -> None:
        """Double the MACs weight above the band's top, halve it below its bottom (the derivative code's rule)."""
        if not self.macs_target:
            return
        low, high = (f * self.macs_target for f in self.macs_band)
        if expected > high:
            self.macs_weight *= 2.0
        elif expected < low:
            self.macs_weight /= 2.0

    # -- search ------------------------------------------------------------------------------------------
    def fit(self, module: TrilevelSupernet | None, data: DataSplits) -> Arch:
        if module is None:
            torch.manual_seed(self.seed)
            module = self.space.supernet()
        model = module.to(self.device)
        self.supernet = model
        if self.teacher_spec:
            self.teacher = load_sr_teacher(self.teacher_spec).to(self.device)
        alphas, weights = model.arch_parameters(), model.weight_parameters()
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():  # DARTS's 1e-3 N(0, 1) init: sparse relaxations have no gradient at exact ties
            for a in alphas:
                a.copy_(1e-3 * torch.randn(a.shape, generator=gen))
        w_opt = torch.optim.Adam(weights, lr=self.lr)
        a_opt = torch.optim.Adam(alphas, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(w_opt, self.lr_milestones, gamma=0.5)
        start, history, payload = resume_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, "trilevel",
                                                     self.epochs, state_dict=model, w_opt=w_opt, a_opt=a_opt,
                                                     scheduler=scheduler)
        self.history = history or self.history
        self.macs_weight = float(payload.get("macs_weight", self.macs_weight))

        train_half, val_half = self._halves(data.train)
        steps = math.ceil(len(train_half) / self.batch_size)
        steps = min(steps, self.steps_per_epoch) if self.steps_per_epoch else steps
        bar = tqdm(total=self.epochs * steps, initial=start * steps, desc=f"trilevel ({self.relaxation})",
                   unit="step", disable=not _progress_enabled(self.progress), dynamic_ncols=True)
        for epoch in range(start, self.epochs):
            row = self._epoch(model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, bar)
            scheduler.step()
            self._adapt_macs_weight(row["expected_macs"])
            row["macs_weight_next"] = self.macs_weight
            self.history.append(row)
            if self.checkpoint:
                save_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, epoch + 1, self.history,
                                 {"macs_weight": self.macs_weight}, state_dict=model, w_opt=w_opt, a_opt=a_opt,
                                 scheduler=scheduler)
        bar.close()
        model.eval()
        self.arch = self.derive(model)
        return self.arch

    def _epoch(self, model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, bar) -> dict:
        import random

        seed = self.seed * 1_000_003 + epoch
        torch.manual_seed(seed)
        random.seed(seed)  # basicsr's crops and flips
        train_loader = DataLoader(train_half, batch_size=self.batch_size, shuffle=True,
                                  generator=torch.Generator().manual_seed(seed))
        val_batches = cycle(DataLoader(val_half, batch_size=self.batch_size, shuffle=True,
                                        generator=torch.Generator().manual_seed(seed + 1)))
        warmup = epoch < self.warmup_epochs
        model.train()
        started = time.perf_counter()
        meter = StepMeter("trilevel search loss", self.log_every)
        expected = None
        for step, (lr, hr) in enumerate(train_loader):
            if step >= steps:
                break
            lr, hr = lr.to(self.device), hr.to(self.device)
            progress = (epoch * steps + step + 1) / (self.epochs * steps)
            model.set_relaxation(self.relaxation, progress=progress, end_fraction=self.end_fraction)
            if not warmup:
                lr_v, hr_v = (t.to(self.device) for t in next(val_batches))
                terms = self.arch_loss(model, lr_v, hr_v)
                grads = torch.autograd.grad(terms["total"], alphas, allow_unused=True)
                for a, g in zip(alphas, grads):
                    a.grad = None if g is None else g.detach()
                a_opt.step()
                a_opt.zero_grad(set_to_none=True)
                meter.add(arch_fidelity=terms["fidelity"] * len(lr_v), n_arch=len(lr_v))
                expected = terms["macs"].detach()
            loss = self.weight_loss(model, lr, hr, warmup)
            w_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=weights)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(weights, self.grad_clip)
            w_opt.step()
            meter.add(loss=loss * len(lr), n=len(lr))
            meter.step(f"of epoch {epoch}")
            bar.update(1)
        sums = meter.totals(f"of epoch {epoch}")
        if expected is None:
            with torch.no_grad():
                expected = model.expected_macs(self.out_hw)
        expected = float(expected)
        return {"epoch": epoch, "warmup": warmup, "train_loss": sums.get("loss", 0.0) / max(sums.get("n", 0), 1),
                "arch_l1": sums["arch_fidelity"] / max(sums["n_arch"], 1) if sums.get("n_arch") else None,
                "expected_macs": expected, "macs_weight": self.macs_weight, "progress": (epoch + 1) / self.epochs,
                "lr": w_opt.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
                "arch": self.derive(model).to_dict()}

    # -- derivation ----------------------------------------------------------------------------------------
    def derive(self, supernet: TrilevelSupernet | None = None) -> Arch:
        supernet = supernet if supernet is not None else self.supernet
        if supernet is None:
            raise RuntimeError("derive: no supernet; call fit() first")
        values = {c.name: c.default for c in self.space.choices}
        values.update(supernet.derive())
        return self.space.check(Arch(values))

    def export(self) -> nn.Module:
        """The derived network carrying the searched supernet's weights."""
        if self.supernet is None or self.arch is None:
            raise RuntimeError("export: call fit() first")
        return self.supernet.export(self.arch.to_dict())

    def weights(self) -> dict[str, list[float]]:
        """The final relaxed weights of every level (for reports)."""
        if self.supernet is None:
            return {}
        m = self.supernet
        with torch.no_grad():
            out = {"gamma": m.relaxed(m.arch_gamma).tolist()}
            for name, cell in m.search_cells():
                out[f"{name}.alpha"] = m.relaxed(cell.arch_alpha).tolist()
                out[f"{name}.beta"] = m.relaxed(cell.arch_beta).tolist()
        return out

    def report(self) -> dict[str, Any]:
        arch = self.arch
        return {"paths": self.supernet.paths if self.supernet else [], "weights": self.weights(),
                "macs_at_output": self.space.macs(arch, self.out_hw) if arch is not None else None,
                "out_hw": list(self.out_hw), "macs_target": self.macs_target}


__all__ = ["TrilevelSearcher", "load_sr_teacher", "macs_target_from"]
