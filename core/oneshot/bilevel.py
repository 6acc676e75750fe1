"""The bilevel loop of differentiable architecture search, shared by DARTS, Hit-Detector, trilevel SR and PocketNet.

Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019
(Alg. 1, eq. 6-8; official loop github.com/quark0/darts `cnn/train_search.py`)
poses the search as a bilevel problem: architecture parameters alpha minimise
a validation loss at the weights w*(alpha) that minimise the training loss.
Every differentiable searcher here approximates it the same way, so the loop
lives once, in `BilevelSearcher.fit`:

- data halves: the training split is cut once, by a seeded permutation
  (`core.engine.data.split_indices`, `train_portion`), into a weight half and
  an architecture half; `data.val` stays untouched for scoring.
- per-epoch seeded loaders: epoch e reseeds torch with
  `seed * 1_000_003 + e` and shuffles both halves with their own generators
  (through `task.loader` when the searcher has a task), so a resumed run
  draws the same batches as an uninterrupted one.
- the alternation: per step, an architecture step on a batch of the
  architecture half, then a weight step on a batch of the weight half (the
  official loop's order), each with its own optimiser (weights: SGD by
  default; alpha: Adam).
- first and second order: order 1 takes grad_alpha L_val(w, alpha); order 2
  (where `second_order` is True) the unrolled gradient of eq. 7 with the
  finite-difference Hessian-vector product of eq. 8.
- warm-up: the first `warmup_epochs` epochs train the weights only
  (Hit-Detector's `arch_start_epoch`, Guo et al., CVPR 2020; trilevel's
  pretraining, Wu et al., arXiv 2101.06658), since alpha's gradient carries
  little signal through untrained weights.
- relaxation schedules: before each step, `relax` sets the mixture's
  relaxation and its keyword arguments (Gumbel temperature per epoch,
  sparsestmax radius per step).
- checkpoint/resume after every epoch (`core.engine.runs`), the progress bar
  and one history row per epoch.
- no per-step host reads: batches of an in-memory tensor dataset are gathered
  on the device (`core.task.task_batches`), and the weight loss and the
  step logs are summed on the device and read once per `log_every` steps
  (`core.engine.meter.StepMeter`; a NaN or infinite loss stops the search at
  that read, naming the steps). On a GPU the loop never waits for the host.

A searcher supplies what differs between methods: `build_supernet`, its
`weight_loss` and `arch_loss` (the loss plus its penalty), its `derive`, and
where it needs them the hooks `prepare` (before the supernet exists),
`setup` (on the built supernet), `init_architecture`, `parameter_groups`,
`weight_optimizer`, `weight_scheduler`, `halves`, `relax`, `train_step` (one
architecture + weight step: DARTS replays it as a CUDA graph),
`epoch_summary`, `end_epoch` and `checkpoint_extra`/`restore`. Step logs may
be tensors (summed on the device) or numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from core.api import Arch, SearchSpace, architecture_parameters, choice_modules, set_mixture
from core.engine.data import DataSplits, cycle, split_indices, to_device
from core.engine.meter import StepMeter
from core.engine.progress import progress_enabled
from core.engine.registry import ConfigError
from core.engine.runs import resume_epoch_state, save_epoch_state
from core.objective import Objective
from core.oneshot.base import Searcher
from core.oneshot.unrolled import unrolled_gradients
from core.task import Task, task_batches


class BilevelSearcher(Searcher):
    """Alternating architecture and weight steps on two halves of the training data (see the module docstring).

    Subclasses set the class attributes below and implement `build_supernet`,
    `weight_loss`, `arch_loss` and `derive`; `fit(module, data) -> Arch` is
    the loop.
    """

    #: the checkpoint's format tag (a checkpoint of another format is refused)
    checkpoint_format = "archforge-bilevel-1"
    #: the method's name in messages and on the progress bar
    title = "bilevel search"
    #: what the items of the training split are, in messages about the halves
    items = "samples"
    #: whether `order: 2` applies (the unrolled gradient needs a weight loss whose step is plain SGD)
    second_order = False
    #: the config key of the weight-only epochs, in messages
    warmup_key = "warmup_epochs"
    #: when the weight scheduler steps: after every "epoch" or after every weight "step"
    scheduler_interval = "epoch"
    #: an architecture parameter outside a step's graph: True gives it a zero gradient (Adam still moves it by
    #: its moments), False leaves its gradient None (Adam skips it)
    zero_unused_arch_grads = True
    #: draw the weight step's batch before the architecture step (DARTS's loop, whose second-order gradient needs
    #: it) or just before the weight step (Hit-Detector's); it fixes the order in which data augmentation draws
    #: from the global generators
    weight_batch_first = True
    #: the collate function of loaders built without a task
    collate = None

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None, epochs: int = 50,
                 batch_size: int = 64, steps_per_epoch: int | None = None, train_portion: float = 0.5,
                 lr: float = 0.025, lr_min: float = 0.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 grad_clip: float | None = None, arch_lr: float = 3e-4,
                 arch_betas: tuple[float, float] = (0.5, 0.999), arch_weight_decay: float = 0.0,
                 warmup_epochs: int = 0, order: int = 1, relaxation: str = "softmax",
                 temperature: tuple[float, float] = (10.0, 0.1), hard: bool = False, end_fraction: float = 1.0,
                 unrolled_eps: float = 0.01, checkpoint: str | None = None, progress: bool = False,
                 device: str = "cpu", task: Task | None = None, log_every: int = 50):
        if self.second_order and not self.weight_batch_first:
            raise TypeError(f"{type(self).__name__}: the second-order gradient needs weight_batch_first")
        if order not in (1, 2) or (order == 2 and not self.second_order):
            allowed = "1 (first order) or 2 (second order)" if self.second_order else "1 (first order only)"
            raise ConfigError(f"strategy.order: expected {allowed}, got {order!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(f"strategy.epochs: expected an integer >= 1, got {epochs!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"strategy.steps_per_epoch: expected an integer >= 1 or null, got {steps_per_epoch!r}")
        if not 0 < train_portion < 1:
            raise ConfigError(f"strategy.train_portion: expected a fraction in (0, 1), got {train_portion!r}")
        if not 0 <= warmup_epochs < epochs:
            raise ConfigError(f"strategy.{self.warmup_key}: expected 0 <= {self.warmup_key} < epochs ({epochs}), "
                              f"got {warmup_epochs!r} (alpha would never train)")
        if len(temperature) != 2 or min(temperature) <= 0:
            raise ConfigError(f"strategy.temperature: expected [start, end] > 0, got {temperature!r}")
        if not isinstance(log_every, int) or log_every < 1:
            raise ConfigError(f"strategy.log_every: expected an integer >= 1, got {log_every!r}")
        self.task, self.log_every = task, log_every
        self.space, self.seed, self.objective = space, seed, objective
        self.epochs, self.batch_size, self.steps_per_epoch = epochs, batch_size, steps_per_epoch
        self.train_portion, self.warmup_epochs, self.order = train_portion, warmup_epochs, order
        self.lr, self.lr_min, self.momentum, self.weight_decay = lr, lr_min, momentum, weight_decay
        self.grad_clip = grad_clip
        self.arch_lr, self.arch_betas, self.arch_weight_decay = arch_lr, tuple(arch_betas), arch_weight_decay
        self.relaxation, self.temperature, self.hard = relaxation, tuple(temperature), hard
        self.end_fraction, self.unrolled_eps = end_fraction, unrolled_eps
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.device = progress, torch.device(device)
        self.history: list[dict[str, Any]] = []
        self.supernet: nn.Module | None = None
        self.arch: Arch | None = None
        self.epoch_steps: int | None = None

    # -- what a searcher supplies ------------------------------------------------------------------
    def build_supernet(self, data: DataSplits) -> nn.Module:
        """A fresh supernet for `data` (called after `torch.manual_seed(seed)`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_supernet(data)")

    def weight_loss(self, model: nn.Module, batch: Any, warmup: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The weight step's loss on a training-half batch, and additive per-step sums for `epoch_summary`."""
        raise NotImplementedError(f"{type(self).__name__} must implement weight_loss(model, batch, warmup)")

    def arch_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The architecture step's loss (loss + penalty) on an architecture-half batch, and additive sums."""
        raise NotImplementedError(f"{type(self).__name__} must implement arch_loss(model, batch)")

    def derive(self, supernet: nn.Module | None = None) -> Arch:
        raise NotImplementedError(f"{type(self).__name__} must implement derive(supernet)")

    # -- hooks with defaults -------------------------------------------------------------------------
    def prepare(self, data: DataSplits) -> None:
        """Work before the supernet exists (checks, Hit-Detector's screening)."""

    def setup(self, model: nn.Module) -> None:
        """Work on the built supernet before the optimisers exist; by default, check it has something to search."""
        if not choice_modules(model):
            raise ValueError(f"{type(model).__name__} has no ChoiceModule: nothing to search")

    def parameter_groups(self, model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(architecture parameters, weights): each ChoiceModule's logits, and every other trainable parameter."""
        alphas = architecture_parameters(model)
        ids = {id(a) for a in alphas}
        return alphas, [p for p in model.parameters() if id(p) not in ids and p.requires_grad]

    def init_architecture(self, alphas: list[nn.Parameter]) -> None:
        """Set the architecture parameters' starting values (default: as the supernet built them)."""

    def weight_optimizer(self, weights: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(weights, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def arch_optimizer(self, alphas: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.Adam(alphas, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay)

    def weight_scheduler(self, optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        """DARTS's: cosine annealing over the epochs down to `lr_min`, stepped per epoch."""
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs, eta_min=self.lr_min)

    def halves(self, data: DataSplits) -> tuple[Dataset, Dataset]:
        """(weight half, architecture half) of `data.train`: a seeded split by `train_portion`."""
        first, second = split_indices(len(data.train), self.train_portion, self.seed, self.items)
        return Subset(data.train, first), Subset(data.train, second)

    def loader(self, dataset: Dataset, seed: int) -> DataLoader:
        """A loader over one half, shuffled by a generator seeded with `seed` (the task's loader, or its
        batches gathered on the device for an in-memory tensor dataset: `core.task.task_batches`)."""
        return task_batches(self.task, dataset, self.batch_size, shuffle=True, seed=seed, device=self.device,
                            collate=self.collate)

    def seed_epoch(self, seed: int) -> None:
        """Reseed the global generators an epoch draws from (dropout, Gumbel noise, detector samplers)."""
        torch.manual_seed(seed)

    def schedule_progress(self, epoch: int, step: int, steps: int) -> float:
        """The fraction of all steps done after this one (the sparsestmax radius schedule's clock)."""
        return (epoch * steps + step + 1) / (self.epochs * steps)

    def relax_kwargs(self, epoch: int, step: int, steps: int) -> dict[str, Any]:
        """The relaxation's keyword arguments at (epoch, step): Gumbel's temperature, annealed linearly per
        epoch from `temperature[0]` to `temperature[1]` (GDAS, Dong & Yang, CVPR 2019); sparsestmax's radius
        from the fraction of steps done."""
        if self.relaxation == "gumbel":
            t = epoch / max(self.epochs - 1, 1)
            start, end = self.temperature
            return {"temperature": start + (end - start) * t, "hard": self.hard}
        if self.relaxation == "sparsestmax":
            return {"progress": self.schedule_progress(epoch, step, steps), "end_fraction": self.end_fraction}
        return {}

    def relax(self, model: nn.Module, epoch: int, step: int, steps: int) -> None:
        """Put the supernet's mixtures in this step's relaxation."""
        set_mixture(model, self.relaxation, **self.relax_kwargs(epoch, step, steps))

    def epoch_summary(self, model: nn.Module, epoch: int, sums: dict[str, float], steps: int,
                      warmup: bool) -> dict[str, Any]:
        """The searcher's columns of an epoch's history row, from the epoch's summed step logs."""
        return dict(sums)

    def end_epoch(self, row: dict[str, Any]) -> None:
        """After an epoch's scheduler step, before its row is kept and checkpointed (penalty-weight updates)."""

    def checkpoint_extra(self) -> dict[str, Any]:
        """Plain values saved with each epoch's checkpoint."""
        return {}

    def restore(self, payload: dict[str, Any]) -> None:
        """Read back `checkpoint_extra`'s values from a checkpoint's payload."""

    def progress_label(self) -> str:
        return self.title

    # -- the architecture gradient ---------------------------------------------------------------------
    def _fill(self, grads, alphas: list[nn.Parameter]) -> list[torch.Tensor | None]:
        if not self.zero_unused_arch_grads:
            return list(grads)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads)]

    def arch_gradients_first_order(self, model: nn.Module, val_batch: Any,
                                   alphas: list[nn.Parameter]) -> list[torch.Tensor | None]:
        """grad_alpha L_val(w, alpha) (DARTS's first-order approximation, xi = 0)."""
        return self._first_order(model, val_batch, alphas)[0]

    def _first_order(self, model, val_batch, alphas):
        loss, logs = self.arch_loss(model, val_batch)
        grads = torch.autograd.grad(loss, alphas, allow_unused=True)
        return self._fill(grads, alphas), logs

    def arch_gradients_second_order(self, model: nn.Module, train_batch: Any, val_batch: Any,
                                    alphas: list[nn.Parameter], weights: list[nn.Parameter], eta: float,
                                    optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
        """DARTS eq. 7-8 (`core.oneshot.unrolled`): L_train is `weight_loss`, L_val is `arch_loss`, and the
        unrolled step is SGD with `momentum` (the optimizer's buffers) and `weight_decay`."""
        return unrolled_gradients(model, lambda: self.weight_loss(model, train_batch, False)[0],
                                  lambda: self.arch_loss(model, val_batch)[0], alphas, weights, eta,
                                  momentum=self.momentum, weight_decay=self.weight_decay, eps=self.unrolled_eps,
                                  optimizer=optimizer)

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self, module: nn.Module | None, data: DataSplits) -> Arch:
        """Search on `data.train` (cut in two halves) and return the derived arch; `module` is the supernet to
        search (None: `build_supernet(data)` with the searcher's seed)."""
        self.prepare(data)
        if module is None:
            torch.manual_seed(self.seed)  # the same initial weights for the same seed
            module = self.build_supernet(data)
        model = module.to(self.device)
        self.supernet = model
        self.setup(model)
        alphas, weights = self.parameter_groups(model)
        self.init_architecture(alphas)
        w_opt, a_opt = self.weight_optimizer(weights), self.arch_optimizer(alphas)
        train_half, val_half = self.halves(data)
        steps = math.ceil(len(train_half) / self.batch_size)
        steps = min(steps, self.steps_per_epoch) if self.steps_per_epoch else steps
        self.epoch_steps = steps  # steps_per_epoch caps an epoch; one pass over the weight half is the most
        scheduler = self.weight_scheduler(w_opt, steps)
        start, history, payload = resume_epoch_state(self.checkpoint, self.checkpoint_format, self.space, self.title,
                                                     self.epochs, state_dict=model, w_opt=w_opt, a_opt=a_opt,
                                                     scheduler=scheduler)
        self.history = history or self.history
        self.restore(payload)
        bar = tqdm(total=self.epochs * steps, initial=start * steps, desc=self.progress_label(), unit="step",
                   disable=not progress_enabled(self.progress), dynamic_ncols=True)
        for epoch in range(start, self.epochs):
            row = self._epoch(model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, scheduler,
                              bar)
            if self.scheduler_interval == "epoch":
                scheduler.step()
            self.end_epoch(row)
            self.history.append(row)
            if self.checkpoint:
                save_epoch_state(self.checkpoint, self.checkpoint_format, self.space, epoch + 1, self.history,
                                 self.checkpoint_extra(), state_dict=model, w_opt=w_opt, a_opt=a_opt,
                                 scheduler=scheduler)
        bar.close()
        model.eval()
        self.arch = self.derive(model)
        return self.arch

    def _epoch(self, model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, scheduler, bar):
        seed = self.seed * 1_000_003 + epoch
        self.seed_epoch(seed)
        train_loader = self.loader(train_half, seed)
        val_batches = cycle(self.loader(val_half, seed + 1))
        warmup = epoch < self.warmup_epochs
        model.train()
        started = time.perf_counter()
        check = StepMeter(f"{self.title} loss", self.log_every)   # the weight loss, checked every log_every steps
        sums = StepMeter(self.title, self.log_every, check=())      # the step logs, read at the end of the epoch
        where = f"of epoch {epoch}"
        if self.weight_batch_first:
            schedule = enumerate(train_loader)
        else:
            later = iter(train_loader)
            schedule = ((step, None) for step in range(steps))
        for step, batch in schedule:
            if step >= steps:
                break
            batch = None if batch is None else to_device(batch, self.device)
            self.relax(model, epoch, step, steps)
            val_batch = None if warmup else to_device(next(val_batches), self.device)
            draw = None if batch is not None else (lambda: to_device(next(later), self.device))
            loss, logs = self.train_step(model, batch, val_batch, warmup, alphas, weights, w_opt, a_opt, draw)
            check.add(loss=loss)
            check.step(where)
            sums.add(**logs)
            if self.scheduler_interval == "step":
                scheduler.step()
            bar.update(1)
        check.check(where)
        summary = self.epoch_summary(model, epoch, sums.totals(where), steps, warmup)
        return {"epoch": epoch, **summary, "lr": w_opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started, "arch": self.derive(model).to_dict()}

    def train_step(self, model: nn.Module, batch: Any, val_batch: Any, warmup: bool, alphas: list[nn.Parameter],
                   weights: list[nn.Parameter], w_opt: torch.optim.Optimizer, a_opt: torch.optim.Optimizer,
                   draw: Callable[[], Any] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """One step of the loop: the architecture step on `val_batch` (none in warm-up: `val_batch` is None),
        then the weight step on `batch` (when None, on `draw()`, called after the architecture step).
        Returns the detached weight loss and the step's logs, still on the device (no host read)."""
        logs: dict[str, Any] = {}
        if val_batch is not None:
            _add(logs, self._arch_step(model, batch, val_batch, alphas, weights, w_opt, a_opt))
        if batch is None:
            batch = draw()
        loss, weight_logs = self._weight_step(model, batch, warmup, weights, w_opt)
        _add(logs, weight_logs)
        return loss, logs

    def _arch_step(self, model, batch, val_batch, alphas, weights, w_opt, a_opt) -> dict[str, float]:
        """One architecture step on `val_batch` (order 2 also needs the weight step's `batch`)."""
        if self.order == 2:
            lr = w_opt.param_groups[0]["lr"]
            grads, logs = self.arch_gradients_second_order(model, batch, val_batch, alphas, weights, lr, w_opt), {}
        else:
            grads, logs = self._first_order(model, val_batch, alphas)
        for a, g in zip(alphas, grads):
            a.grad = None if g is None else g.detach()
        a_opt.step()
        a_opt.zero_grad(set_to_none=True)
        return logs

    def _weight_step(self, model, batch, warmup, weights, w_opt) -> tuple[torch.Tensor, dict[str, Any]]:
        """One weight step on `batch`; returns the detached loss (checked for NaN by the loop) and the logs."""
        loss, logs = self.weight_loss(model, batch, warmup)
        w_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=weights)
        if self.grad_clip:
            nn.utils.clip_grad_norm_(weights, self.grad_clip)
        w_opt.step()
        return loss.detach(), logs


def _add(sums: dict[str, float], logs: dict[str, float]) -> None:
    for key, value in logs.items():
        sums[key] = sums.get(key, 0) + value


__all__ = ["BilevelSearcher"]
