"""Trilevel NAS search: gamma, alpha, beta and the supernet weights in one phase.

Wu, Huang, Kumar, Sukthanker, Timofte, Van Gool, arXiv 2101.06658. What we
follow, and where from (METHODS.md section 3.2; the paper's method text was not
available to us, so the details come from the derivative code
`hanyao8/DA-NAS-SISR`, `train_search.py`, `architect.py`,
`model_search_flexible.py`):

- Relaxation: sparsestmax on gamma, alpha and beta with the radius growing
  linearly with the fraction of steps done (`r = iter / total_iters` there;
  ours reaches each choice's one-hot radius sqrt((K-1)/K) at `end_fraction`,
  see `core.api.sparsestmax`). `softmax` and `sparsemax` for comparison.
- Sorting (network level): the order term sum_paths sum_k (gamma_{k+1} - gamma_k)
  on the raw gamma along each root-to-leaf path, weight 1e-5
  (`core.api.sparsestmax.order_loss`, `order_mode: telescoping`; `hinge` is
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
  Measured (docs/tasks/super_resolution.md): with `all`, 3 of 4 seeds
  derived such a path (`UC`) and lost to MSRResNet at equal MACs; with
  `cells`, 4 of 4 kept every cell at LR. Above the target the push-down acts
  on all three levels. The derivative
  code weighs supernet FLOPs by a tiny constant and doubles it when FLOPs
  exceed the range's top, halves it below its bottom, to stay within
  [100, 400] GFLOPs; we normalise by the target (so the weight is unitless)
  and adapt the same way after each epoch within `macs_band * macs_target`
  (default [0.5, 1.0] x target). The target defaults to the objective's
  `macs <= X` constraint.
- Optimisation: the shared bilevel loop (`core.oneshot.bilevel`), first
  order, alternating per step: an architecture step (Adam,
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

A `core.oneshot.base.Searcher` (a `BilevelSearcher`): `archforge search` calls `fit(None, data)`, which checkpoints to `checkpoint`
after every epoch (with the adapted MACs weight) and resumes from it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from core.api import Arch, SearchSpace
from core.api.sparsestmax import order_loss
from core.engine.data import DataSplits, split_indices
from core.engine.registry import STRATEGIES, ConfigError
from core.objective import Objective
from core.oneshot.bilevel import BilevelSearcher
from core.task import Task
from tasks.super_resolution.supernet import RELAXATIONS, TrilevelSupernet


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
        from core.engine.runs import load_checkpoint

        state = load_checkpoint(p, "strategy.teacher.checkpoint")
        net.load_state_dict(state[key] if key and key in state else state)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@STRATEGIES.register("trilevel")
class TrilevelSearcher(BilevelSearcher):
    """Trilevel NAS on a `trilevel_sr` space (see the module docstring). `fit(None, data) -> Arch`."""

    checkpoint_format = "archforge-trilevel-1"
    title = "trilevel"
    items = "training images"
    #: a cell off every path with weight (sparsestmax zeros) is outside the step's graph: Adam leaves it alone
    zero_unused_arch_grads = False

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
                 progress: bool = False, device: str = "cpu", task: Task | None = None):
        if relaxation not in RELAXATIONS:
            raise ConfigError(f"strategy.relaxation: expected one of {', '.join(RELAXATIONS)}, got {relaxation!r}")
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
        super().__init__(space, seed=seed, objective=objective, epochs=epochs, batch_size=batch_size,
                         steps_per_epoch=steps_per_epoch, train_portion=train_portion, lr=lr, grad_clip=grad_clip,
                         arch_lr=arch_lr, arch_betas=arch_betas, arch_weight_decay=arch_weight_decay,
                         warmup_epochs=warmup_epochs, relaxation=relaxation, end_fraction=end_fraction,
                         checkpoint=checkpoint, progress=progress, device=device, task=task)
        self.lr_milestones = lr_milestones if lr_milestones is not None else \
            sorted({max(1, round(epochs * f)) for f in (0.25, 0.5, 0.75)})
        self.macs_target = macs_target if macs_target is not None else macs_target_from(objective)
        self.macs_weight, self.macs_band, self.macs_mode = float(macs_weight), band, macs_mode
        self.macs_pull = macs_pull
        self.order_weight, self.order_mode = order_weight, order_mode
        self.sandwich = sandwich
        self.teacher_spec, self.teacher_weight, self.hr_weight = teacher, teacher_weight, hr_weight
        self.out_hw = tuple(out_hw or getattr(space, "cost_output", (720, 1280)))
        self.supernet: TrilevelSupernet | None = None
        self.teacher: nn.Module | None = None
        self._last_macs = float("nan")

    def progress_label(self) -> str:
        return f"trilevel ({self.relaxation})"

    # -- losses ----------------------------------------------------------------------------------------
    def _fidelity(self, sr: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        loss = self.hr_weight * F.l1_loss(sr, hr)
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher(lr)
            loss = loss + self.teacher_weight * F.l1_loss(sr, target)
        return loss

    def arch_terms(self, model: TrilevelSupernet, lr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        """The architecture step's loss terms: fidelity, MACs term, sorting term and their `total`."""
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

    def arch_loss(self, model: TrilevelSupernet, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Fidelity + MACs term + sorting term on an architecture-half batch."""
        lr, hr = batch
        terms = self.arch_terms(model, lr, hr)
        self._last_macs = terms["macs"].detach()  # read at the end of the epoch: no host read per step
        return terms["total"], {"arch_fidelity": terms["fidelity"].detach() * len(lr), "n_arch": len(lr)}

    def weight_loss(self, model: TrilevelSupernet, batch: Any, warmup: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The sandwich rule: relaxed + widest + narrowest (warm-up: widest + narrowest + one random)."""
        lr, hr = batch
        modes = ("max", "min", "random") if warmup else (("relaxed", "max", "min") if self.sandwich else ("relaxed",))
        total = 0.0
        for mode in modes:
            model.width_mode = mode
            total = total + self._fidelity(model(lr), lr, hr)
        model.width_mode = "relaxed"
        return total, {"train_loss": total.detach() * len(lr), "n": len(lr)}

    def _adapt_macs_weight(self, expected: float) -> None:
        """Double the MACs weight above the band's top, halve it below its bottom (the derivative code's rule)."""
        if not self.macs_target:
            return
        low, high = (f * self.macs_target for f in self.macs_band)
        if expected > high:
            self.macs_weight *= 2.0
        elif expected < low:
            self.macs_weight /= 2.0

    # -- the bilevel loop's pieces -----------------------------------------------------------------------
    def build_supernet(self, data: DataSplits) -> TrilevelSupernet:
        return self.space.supernet()

    def setup(self, model: TrilevelSupernet) -> None:
        if self.teacher_spec:
            self.teacher = load_sr_teacher(self.teacher_spec).to(self.device)

    def parameter_groups(self, model: TrilevelSupernet) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        return model.arch_parameters(), model.weight_parameters()

    def init_architecture(self, alphas: list[nn.Parameter]) -> None:
        """DARTS's 1e-3 N(0, 1) init: sparse relaxations have no gradient at exact ties."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for a in alphas:
                a.copy_(1e-3 * torch.randn(a.shape, generator=gen))

    def weight_optimizer(self, weights: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(weights, lr=self.lr)

    def weight_scheduler(self, optimizer, steps):
        """The learning rate halves at each of `lr_milestones` (epochs)."""
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, self.lr_milestones, gamma=0.5)

    def halves(self, data: DataSplits) -> tuple[Any, Any]:
        """50/50 by image when the dataset can (random crops of one image stay on one side), else by item."""
        train = data.train
        n = len(train.hrs) if hasattr(train, "subset") else len(train)
        first, second = split_indices(n, self.train_portion, self.seed, self.items)
        if hasattr(train, "subset"):
            per_half = max(1, len(train) // 2)
            return train.subset(first, per_half), train.subset(second, per_half)
        return Subset(train, first), Subset(train, second)

    def seed_epoch(self, seed: int) -> None:
        super().seed_epoch(seed)
        random.seed(seed)  # basicsr's crops and flips

    def relax(self, model: TrilevelSupernet, epoch: int, step: int, steps: int) -> None:
        model.set_relaxation(self.relaxation, progress=self.schedule_progress(epoch, step, steps),
                             end_fraction=self.end_fraction)

    def epoch_summary(self, model: TrilevelSupernet, epoch: int, sums: dict[str, float], steps: int,
                      warmup: bool) -> dict[str, Any]:
        if sums.get("n_arch"):
            expected = float(self._last_macs)
        else:
            with torch.no_grad():
                expected = float(model.expected_macs(self.out_hw))
        return {"warmup": warmup, "train_loss": sums.get("train_loss", 0.0) / max(sums.get("n", 0), 1),
                "arch_l1": sums["arch_fidelity"] / max(sums["n_arch"], 1) if sums.get("n_arch") else None,
                "expected_macs": expected, "macs_weight": self.macs_weight,
                "progress": (epoch + 1) / self.epochs}

    def end_epoch(self, row: dict[str, Any]) -> None:
        self._adapt_macs_weight(row["expected_macs"])
        row["macs_weight_next"] = self.macs_weight

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"macs_weight": self.macs_weight}

    def restore(self, payload: dict[str, Any]) -> None:
        self.macs_weight = float(payload.get("macs_weight", self.macs_weight))

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
