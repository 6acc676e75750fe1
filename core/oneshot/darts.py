"""DARTS: differentiable architecture search, first and second order.

Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search", ICLR 2019
(arXiv 1806.09055); official code github.com/quark0/darts (`cnn/train_search.py`,
`cnn/architect.py`).

The supernet's `ChoiceModule`s run in mixture mode: each choice's output is
the relaxation-weighted sum of its candidates (eq. 2; softmax in the paper).
The search is the shared bilevel loop (`core.oneshot.bilevel`: the two
halves of the training split, `train_portion` 0.5 as the official search does
with CIFAR-10's training set; an architecture step on a validation-half batch,
then a weight step on a training-half batch; order 1 or the unrolled order 2
of eq. 6-8, with xi the weight optimiser's current learning rate and the
unrolled step including its momentum buffer and weight decay, as in
`architect.py`). Both steps use the task's loss (`Task.loss`): DARTS adds no
penalty.

Official defaults (ours): weights SGD lr 0.025 cosine-annealed per epoch to
0.001, momentum 0.9, weight decay 3e-4, gradient clip 5, batch 64, 50 epochs;
architecture Adam lr 3e-4, betas (0.5, 0.999), weight decay 1e-3; search
network C=16, 8 cells (`DartsSpace.supernet()` defaults). On tiny data
(scikit-learn's 8x8 digits, ~1,000 training images, so ~8 steps per epoch
per half) the architecture barely moves at lr 3e-4 in a few epochs; a
workable scaled-down recipe is `supernet: {C: 8, layers: 5}`, `epochs: 20`,
`arch_lr: 3e-3` (docs/weight_sharing.md).

Relaxations: `softmax` (the paper), `gumbel` (Gumbel-softmax; its
temperature anneals linearly per epoch from `temperature[0]` to
`temperature[1]`, GDAS's 10 -> 0.1, Dong & Yang, CVPR 2019), `sparsestmax`
(SSN, `core.api.sparsestmax`; its radius follows the linear schedule over
all steps, one-hot at the end) and `sparsemax`. Logits with all entries
equal (a supernet's zero init) restart at 1e-3 * N(0, 1), DARTS's
`_initialize_alphas`: sparse relaxations have no gradient at exact ties.

Derivation: on a `DartsSpace` the DARTS rule (Sec. 2.4): per node the two
strongest incoming edges (strength: the largest non-`none` weight), each
with its strongest non-`none` op; weights are the relaxation's (softmax as
in the paper, or the final sparsestmax weights, ties broken by the softmax
of the logits). On other spaces each choice takes its largest logit
(`core.api.derive`), choices missing from the supernet keep their
defaults, and the space's `check` canonicalises it. PocketNet's face space
is a `DartsSpace` and searches with this class.

This is a `core.oneshot.base.Searcher` (a `BilevelSearcher`): `archforge search`
calls `search(context)` -> `fit(None, data)` and gets the derived `Arch`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.api import Arch, SearchSpace, choice_modules, derive
from core.api.relax import RELAXATIONS, relax
from core.engine.data import DataSplits
from core.engine.registry import STRATEGIES, ConfigError
from core.objective import Objective
from core.oneshot.bilevel import BilevelSearcher
from core.supernet.spos import build_supernet
from core.task import Task

RELAXATION_NAMES = ("softmax", "gumbel", "sparsestmax", "sparsemax")


@STRATEGIES.register("darts")
class DartsSearcher(BilevelSearcher):
    """DARTS search (see the module docstring). `fit(module, data) -> Arch`."""

    checkpoint_format = "archforge-darts-1"
    title = "DARTS"
    second_order = True

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None, epochs: int = 50,
                 order: int = 1, relaxation: str = "softmax", batch_size: int = 64, train_portion: float = 0.5,
                 lr: float = 0.025, lr_min: float = 0.001, momentum: float = 0.9, weight_decay: float = 3e-4,
                 grad_clip: float | None = 5.0, arch_lr: float = 3e-4, arch_betas: tuple[float, float] = (0.5, 0.999),
                 arch_weight_decay: float = 1e-3, unrolled_eps: float = 0.01,
                 temperature: tuple[float, float] = (10.0, 0.1), hard: bool = False, end_fraction: float = 1.0,
                 steps_per_epoch: int | None = None, supernet: dict | None = None, checkpoint: str | None = None,
                 progress: bool = False, device: str = "cpu", task: Task | None = None):
        if relaxation not in RELAXATION_NAMES:
            raise ConfigError(f"strategy.relaxation: expected one of {RELAXATION_NAMES}, got {relaxation!r}")
        if relaxation not in RELAXATIONS:
            raise ConfigError(f"strategy.relaxation: {relaxation!r} is not registered in core.api.relax")
        super().__init__(space, seed=seed, objective=objective, epochs=epochs, batch_size=batch_size,
                         steps_per_epoch=steps_per_epoch, train_portion=train_portion, lr=lr, lr_min=lr_min,
                         momentum=momentum, weight_decay=weight_decay, grad_clip=grad_clip, arch_lr=arch_lr,
                         arch_betas=arch_betas, arch_weight_decay=arch_weight_decay, order=order,
                         relaxation=relaxation, temperature=temperature, hard=hard, end_fraction=end_fraction,
                         unrolled_eps=unrolled_eps, checkpoint=checkpoint, progress=progress, device=device,
                         task=task)
        self.supernet_kwargs = dict(supernet or {})

    def progress_label(self) -> str:
        return f"DARTS ({self.relaxation}, order {self.order})"

    # -- the bilevel loop's pieces --------------------------------------------------------------------
    def prepare(self, data: DataSplits) -> None:
        if self.task is None:
            raise ValueError("DARTS needs a task (the loss of a batch): DartsSearcher(..., task=...)")

    def build_supernet(self, data: DataSplits) -> nn.Module:
        return build_supernet(self.space, data.num_classes, **self.supernet_kwargs)

    def init_architecture(self, alphas: list[nn.Parameter]) -> None:
        """Logits with all entries equal restart at 1e-3 * N(0, 1) (DARTS's `_initialize_alphas`)."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for a in alphas:
                if a.numel() > 1 and bool((a == a.reshape(-1)[0]).all()):
                    a.copy_(1e-3 * torch.randn(a.shape, generator=gen).to(a))

    def weight_loss(self, model: nn.Module, batch: Any, warmup: bool) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = self.task.loss(model, batch)
        n = int(logs.get("n", 1))
        return loss, {"train_loss": float(loss.detach()) * n, "correct": float(logs.get("correct", 0.0)),
                      "n_train": n}

    def arch_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(model, batch)[0], {}

    def epoch_summary(self, model: nn.Module, epoch: int, sums: dict[str, float], steps: int,
                      warmup: bool) -> dict[str, Any]:
        n = max(sums.get("n_train", 0), 1)
        return {"train_loss": sums.get("train_loss", 0.0) / n, "train_accuracy": sums.get("correct", 0.0) / n}

    # -- relaxation weights ----------------------------------------------------------------------------
    def weights(self, logits: torch.Tensor) -> torch.Tensor:
        """The relaxation weights at the end of the schedule (what derivation ranks; Gumbel uses plain softmax)."""
        if self.relaxation == "sparsestmax":
            return relax(logits, "sparsestmax", progress=1.0, end_fraction=self.end_fraction)
        if self.relaxation == "sparsemax":
            return relax(logits, "sparsemax")
        return F.softmax(logits, dim=-1)

    def ranking_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """What the DARTS rule ranks: `weights`, with ties of the sparse relaxations (one-hot edges at the end
        of the sparsestmax schedule, zeros) broken by the softmax of the logits."""
        weights = self.weights(logits)
        if self.relaxation in ("sparsestmax", "sparsemax"):
            weights = weights + 1e-6 * F.softmax(logits, dim=-1)
        return weights

    # -- derivation -----------------------------------------------------------------------------------
    def derive(self, supernet: nn.Module | None = None) -> Arch:
        """The arch the searched supernet stands for (DARTS rule on a DartsSpace, else argmax per choice)."""
        supernet = supernet if supernet is not None else self.supernet
        if supernet is None:
            raise RuntimeError("derive: no supernet; call fit() first")
        from core.zoo.darts import DartsSpace

        if isinstance(self.space, DartsSpace):
            return darts_derive(self.space, supernet, self.ranking_weights)
        values: dict[str, Any] = {c.name: c.default for c in self.space.choices}
        values.update({k: v for k, v in derive(supernet).items() if k in self.space})
        return self.space.check(Arch(values))

    def alphas(self) -> dict[str, list[float]]:
        """Each choice's relaxation weights (end of schedule), for logging and reports."""
        if self.supernet is None:
            return {}
        seen: dict[str, list[float]] = {}
        for m in choice_modules(self.supernet):
            if m.name not in seen:
                seen[m.name] = [float(v) for v in self.weights(m.logits.detach().float().cpu())]
        return seen


def darts_derive(space, supernet: nn.Module, weights_fn: Callable[[torch.Tensor], torch.Tensor]) -> Arch:
    """The DARTS rule (`core.zoo.darts`) on the weights `weights_fn(logits)` of each edge.

    With softmax weights this is exactly `DartsSpace.derive`; other relaxations rank the edges by their own weights.
    """
    from core.zoo.darts import CELL_TYPES, Genotype, genotype_to_arch, parse_cell, steps_for_edges

    by_name = {m.name: m for m in choice_modules(supernet)}
    fields = {}
    for cell in CELL_TYPES:
        edge_weights = []
        while f"{cell}.edge{len(edge_weights)}" in by_name:
            logits = by_name[f"{cell}.edge{len(edge_weights)}"].logits.detach().float().cpu()
            edge_weights.append(weights_fn(logits))
        if not edge_weights:
            raise ValueError(f"supernet has no ChoiceModule named {cell}.edge0")
        ops = by_name[f"{cell}.edge0"].choice.options
        fields[cell] = parse_cell(edge_weights, ops)
        fields[f"{cell}_concat"] = list(range(2, steps_for_edges(len(edge_weights)) + 2))
    return space.check(genotype_to_arch(Genotype(**fields)))


__all__ = ["DartsSearcher", "darts_derive", "RELAXATION_NAMES"]
