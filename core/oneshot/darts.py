"""DARTS: differentiable architecture search, first and second order.

Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search", ICLR 2019
(arXiv 1806.09055); official code github.com/quark0/darts (`cnn/train_search.py`,
`cnn/architect.py`).

The supernet's `ChoiceModule`s run in mixture mode: each choice's output is
the relaxation-weighted sum of its candidates (eq. 2; softmax in the paper).
Training alternates, per step, an architecture step on a batch of the
validation half and a weight step on a batch of the training half (Alg. 1;
the official loop does the architecture step first). The training split of
the data is cut into these two halves (`train_portion` 0.5, as the official
search does with CIFAR-10's training set); `data.val` is left for scoring.

- order 1: alpha <- alpha - lr_a * grad_alpha L_val(w, alpha).
- order 2 (eq. 6-8): grad_alpha L_val(w', alpha) with w' = w - xi grad_w L_train(w, alpha)
  the one-step unrolled weights; by the chain rule
      grad_alpha L_val(w', alpha) - xi grad^2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)   (eq. 7)
  and the Hessian-vector product by central finite differences
      [grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)] / (2 eps),
      w+- = w +- eps grad_w' L_val(w', alpha),  eps = 0.01 / ||grad_w' L_val(w', alpha)||   (eq. 8).
  As in `architect.py`, xi is the weight optimiser's current learning rate
  and the unrolled step includes its momentum buffer and weight decay.

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
all steps, one-hot at the end) and `sparsemax`.

Derivation: on a `DartsSpace` the DARTS rule (Sec. 2.4): per node the two
strongest incoming edges (strength: the largest non-`none` weight), each
with its strongest non-`none` op; weights are the relaxation's (softmax as
in the paper, or the final sparsestmax weights, ties broken by the softmax
of the logits). On other spaces each choice takes its largest logit
(`core.api.derive`), choices missing from the supernet keep their
defaults, and the space's `check` canonicalises it.

This is a `core.oneshot.base.Searcher`, not ask/tell: `archforge search`
calls `search(context)` -> `fit(None, data)` (a supernet is built from the space)
and gets the derived `Arch`. `fit` checkpoints after each epoch when
`checkpoint` is set, and resumes from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from core.task import Task
from core.oneshot.base import Searcher
from core.engine.progress import progress_enabled
from core.engine.data import DataSplits, cycle, split_indices, to_device
from core.engine.registry import STRATEGIES
from core.engine.runs import resume_epoch_state, save_epoch_state
from core.objective import Objective
from core.api import Arch, SearchSpace, architecture_parameters, choice_modules, derive, set_mixture
from core.api.relax import RELAXATIONS, relax
from core.supernet.spos import build_supernet

CHECKPOINT_FORMAT = "archforge-darts-1"
RELAXATION_NAMES = ("softmax", "gumbel", "sparsestmax", "sparsemax")


@STRATEGIES.register("darts")
class DartsSearcher(Searcher):
    """DARTS search (see the module docstring). `fit(module, data) -> Arch`."""


    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None, epochs: int = 50,
                 order: int = 1, relaxation: str = "softmax", batch_size: int = 64, train_portion: float = 0.5,
                 lr: float = 0.025, lr_min: float = 0.001, momentum: float = 0.9, weight_decay: float = 3e-4,
                 grad_clip: float | None = 5.0, arch_lr: float = 3e-4, arch_betas: tuple[float, float] = (0.5, 0.999),
                 arch_weight_decay: float = 1e-3, unrolled_eps: float = 0.01,
                 temperature: tuple[float, float] = (10.0, 0.1), hard: bool = False, end_fraction: float = 1.0,
                 steps_per_epoch: int | None = None, supernet: dict | None = None, checkpoint: str | None = None,
                 progress: bool = False, device: str = "cpu", task: Task | None = None):
        self.task = task
        if order not in (1, 2):
            raise ValueError(f"strategy.order: expected 1 (first order) or 2 (second order), got {order!r}")
        if relaxation not in RELAXATION_NAMES:
            raise ValueError(f"strategy.relaxation: expected one of {RELAXATION_NAMES}, got {relaxation!r}")
        if relaxation not in RELAXATIONS:
            raise ValueError(f"strategy.relaxation: {relaxation!r} is not registered in core.api.relax")
        if not 0 < train_portion < 1:
            raise ValueError(f"strategy.train_portion: expected a fraction in (0, 1), got {train_portion!r}")
        if epochs < 1:
            raise ValueError(f"strategy.epochs: expected an integer >= 1, got {epochs!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"strategy.steps_per_epoch: expected an integer >= 1 or null, got {steps_per_epoch!r}")
        if len(temperature) != 2 or min(temperature) <= 0:
            raise ValueError(f"strategy.temperature: expected [start, end] > 0, got {temperature!r}")
        self.space, self.seed, self.objective = space, seed, objective
        self.epochs, self.order, self.relaxation = epochs, order, relaxation
        self.batch_size, self.train_portion = batch_size, train_portion
        self.lr, self.lr_min, self.momentum, self.weight_decay = lr, lr_min, momentum, weight_decay
        self.grad_clip = grad_clip
        self.arch_lr, self.arch_betas, self.arch_weight_decay = arch_lr, tuple(arch_betas), arch_weight_decay
        self.unrolled_eps = unrolled_eps
        self.temperature, self.hard, self.end_fraction = tuple(temperature), hard, end_fraction
        self.steps_per_epoch, self.supernet_kwargs = steps_per_epoch, dict(supernet or {})
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.device = progress, torch.device(device)
        self.history: list[dict[str, Any]] = []
        self.supernet: nn.Module | None = None
        self.arch: Arch | None = None

    # -- relaxation -------------------------------------------------------------------------------
    def relax_kwargs(self, epoch: int, step: int, steps: int) -> dict[str, Any]:
        """The relaxation's keyword arguments at (epoch, step): temperature or radius schedules."""
        if self.relaxation == "gumbel":
            t = epoch / max(self.epochs - 1, 1)
            start, end = self.temperature
            return {"temperature": start + (end - start) * t, "hard": self.hard}
        if self.relaxation == "sparsestmax":
            done = (epoch * steps + step + 1) / (self.epochs * steps)
            return {"progress": done, "end_fraction": self.end_fraction}
        return {}

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

    # -- data ---------------------------------------------------------------------------------------
    def _halves(self, data: DataSplits) -> tuple[Subset, Subset]:
        first, second = split_indices(len(data.train), self.train_portion, self.seed, "samples")
        return Subset(data.train, first), Subset(data.train, second)

    # -- the two gradients -------------------------------------------------------------------------
    def _loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.task.loss(model, batch)[0]

    def arch_gradients_first_order(self, model: nn.Module, val_batch: Any,
                                   alphas: list[nn.Parameter]) -> list[torch.Tensor]:
        loss = self._loss(model, val_batch)
        grads = torch.autograd.grad(loss, alphas, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads)]

    def arch_gradients_second_order(self, model: nn.Module, train_batch: Any, val_batch: Any,
                                    alphas: list[nn.Parameter],
                                    weights: list[nn.Parameter], eta: float,
                                    optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
        """Eq. 7-8: the unrolled architecture gradient with a finite-difference Hessian-vector product.

        Restores the weights and the BN running statistics before returning
        (the official code runs the unrolled forward on a throw-away copy).
        """
        buffers = [b.detach().clone() for b in model.buffers()]
        backup = [w.detach().clone() for w in weights]
        try:
            # w' = w - eta (momentum * buffer + grad_w L_train + weight_decay * w), architect._compute_unrolled_model
            loss = self._loss(model, train_batch)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            with torch.no_grad():
                for w, g in zip(weights, grads):
                    step = (torch.zeros_like(w) if g is None else g) + self.weight_decay * w
                    state = optimizer.state.get(w, {}) if optimizer is not None else {}
                    if state.get("momentum_buffer") is not None:
                        step = step + self.momentum * state["momentum_buffer"]
                    w.sub_(eta * step)
            # grad_alpha L_val(w', alpha) and v = grad_w' L_val(w', alpha)
            loss = self._loss(model, val_batch)
            grads = torch.autograd.grad(loss, list(alphas) + list(weights), allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(list(alphas) + list(weights), grads)]
            d_alpha, vector = grads[:len(alphas)], grads[len(alphas):]
            # Hessian-vector product by central differences around w (architect._hessian_vector_product)
            norm = torch.sqrt(sum((v * v).sum() for v in vector))
            if float(norm) == 0.0:
                return d_alpha
            r = self.unrolled_eps / float(norm)
            implicit = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for w, w0, v in zip(weights, backup, vector):
                        w.copy_(w0 + sign * r * v)
                loss = self._loss(model, train_batch)
                g = torch.autograd.grad(loss, alphas, allow_unused=True)
                implicit.append([torch.zeros_like(a) if gi is None else gi for a, gi in zip(alphas, g)])
            return [da - eta * (gp - gn) / (2 * r) for da, gp, gn in zip(d_alpha, *implicit)]
        finally:
            with torch.no_grad():
                for w, w0 in zip(weights, backup):
                    w.copy_(w0)
                for b, b0 in zip(model.buffers(), buffers):
                    b.copy_(b0)

    # -- search -------------------------------------------------------------------------------------
    def fit(self, module: nn.Module | None, data: DataSplits) -> Arch:
        """Search on `data.train` (split in two halves) and return the derived arch.

        `module` is the supernet to search (None: `space.supernet(**supernet)`
        with the data's number of classes); both steps use the task's loss
        (`Task.loss`; classification: cross-entropy, a DARTS auxiliary head
        weighing 0.4).
        """
        if self.task is None:
            raise ValueError("DARTS needs a task (the loss of a batch): DartsSearcher(..., task=...)")
        if module is None:
            torch.manual_seed(self.seed)  # the same initial weights for the same seed
            module = build_supernet(self.space, data.num_classes, **self.supernet_kwargs)
        model = module.to(self.device)
        if not choice_modules(model):
            raise ValueError(f"{type(model).__name__} has no ChoiceModule: nothing to search")
        self.supernet = model
        alphas = architecture_parameters(model)
        self._break_ties(alphas)
        alpha_ids = {id(a) for a in alphas}
        weights = [p for p in model.parameters() if id(p) not in alpha_ids and p.requires_grad]
        w_opt = torch.optim.SGD(weights, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        a_opt = torch.optim.Adam(alphas, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, self.epochs, eta_min=self.lr_min)
        start_epoch, history, _ = resume_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, "DARTS", self.epochs,
                                                  state_dict=model, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
        self.history = history or self.history

        train_half, val_half = self._halves(data)
        steps = math.ceil(len(train_half) / self.batch_size)
        steps = min(steps, self.steps_per_epoch) if self.steps_per_epoch else steps
        bar = tqdm(total=self.epochs * steps, initial=start_epoch * steps, desc=f"DARTS ({self.relaxation}, "
                   f"order {self.order})", unit="step", disable=not progress_enabled(self.progress),
                   dynamic_ncols=True)
        for epoch in range(start_epoch, self.epochs):
            row = self._epoch(model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, bar)
            scheduler.step()
            self.history.append(row)
            if self.checkpoint:
                save_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, epoch + 1, self.history,
                                 state_dict=model, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
        bar.close()
        model.eval()
        self.arch = self.derive(model)
        return self.arch

    def _break_ties(self, alphas: list[nn.Parameter]) -> None:
        """Logits with all entries equal (a supernet's zero init) restart at 1e-3 * N(0, 1), DARTS's
        `_initialize_alphas`; sparse relaxations have no gradient at exact ties (see core.api.sparsestmax)."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for a in alphas:
                if a.numel() > 1 and bool((a == a.reshape(-1)[0]).all()):
                    a.copy_(1e-3 * torch.randn(a.shape, generator=gen).to(a))

    def _epoch(self, model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, bar) -> dict:
        seed = self.seed * 1_000_003 + epoch
        torch.manual_seed(seed)
        train_loader = self.task.loader(train_half, self.batch_size, shuffle=True, seed=seed)
        val_batches = cycle(self.task.loader(val_half, self.batch_size, shuffle=True, seed=seed + 1))
        model.train()
        started = time.perf_counter()
        sums = {"train_loss": 0.0, "correct": 0.0, "n_train": 0}
        eta = w_opt.param_groups[0]["lr"]
        for step, batch in enumerate(train_loader):
            if step >= steps:
                break
            batch = to_device(batch, self.device)
            val_batch = to_device(next(val_batches), self.device)
            set_mixture(model, self.relaxation, **self.relax_kwargs(epoch, step, steps))
            # architecture step on the validation half
            if self.order == 1:
                grads = self.arch_gradients_first_order(model, val_batch, alphas)
            else:
                grads = self.arch_gradients_second_order(model, batch, val_batch, alphas, weights, eta, w_opt)
            for a, g in zip(alphas, grads):
                a.grad = g.detach()
            a_opt.step()
            a_opt.zero_grad(set_to_none=True)
            # weight step on the training half
            loss, logs = self.task.loss(model, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"DARTS training loss is {value} at epoch {epoch} step {step}")
            w_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=weights)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(weights, self.grad_clip)
            w_opt.step()
            n = int(logs.get("n", 1))
            sums["train_loss"] += value * n
            sums["correct"] += float(logs.get("correct", 0.0))
            sums["n_train"] += n
            bar.update(1)
        n = max(sums["n_train"], 1)
        arch = self.derive(model)
        return {"epoch": epoch, "train_loss": sums["train_loss"] / n, "train_accuracy": sums["correct"] / n,
                "lr": eta, "seconds": time.perf_counter() - started, "arch": arch.to_dict()}

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
    from core.zoo.darts import CELL_TYPES, Genotype, parse_cell, steps_for_edges, genotype_to_arch

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
