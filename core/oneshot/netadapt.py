"""NetAdaptV2: ordered-dropout super-network training and the multi-layer coordinate descent (MCD) optimizer.

Yang, Liao, Sze. "NetAdaptV2: Efficient Neural Architecture Search with Fast
Super-Network Training and Architecture Optimization", CVPR 2021
(arXiv 2104.00031). No official code is public. The stored copy of the paper
we could consult holds the abstract, Sec. 1 and the start of Sec. 2.1; what
follows from Sec. 2.3-2.4 is our reading of the method, and every number
that the paper's text did not give us is ours and marked so.

1. Super-network training with ordered dropout (Sec. 2.3). The largest
   network of a `NetAdaptSpace` is trained with, at every step, a width drawn
   for every layer and *every image* (`per_image=True`; `False` draws one
   width per layer for the whole batch, the slimmable-network way), uniformly
   from the layer's options, width 0 (a bypassed layer) included; trailing
   channels are zeroed by masks, so one forward-backward pass trains as many
   sub-networks as the batch has images. SGD with Nesterov momentum 0.9,
   weight decay 4e-5, cosine schedule per step, batch 32, lr 0.2, 5 epochs
   (our defaults, tuned on the embedded digits: the largest network reaches
   ~94% and the smallest ~82% validation accuracy after 4 epochs;
   `OrderedDropoutTrainer`).

2. Multi-layer coordinate descent (Sec. 2.4, which extends NetAdaptV1's
   single-layer coordinate descent, Yang et al., ECCV 2018). Start from the
   largest network. Each iteration t has a resource target
   `target_t = max(budget, R(current) - dR_t)`, dR_t = `decrement` (or
   `decrement_ratio` x R(largest)) x `decrement_decay`^t (NetAdaptV1's
   resource-reduction schedule). It samples J = `samples` candidates; each
   shrinks L = `layers_per_sample` randomly chosen layers at once: each chosen
   layer takes the largest of its widths whose own reduction reaches dR/L
   (NetAdaptV1's per-layer rule, with an equal share of the reduction), then,
   while the candidate still misses the target (layers interact: a layer's
   width changes the next one's input), the chosen layers shrink one option
   more in turn, and a further random layer joins when they are all at their
   smallest. A width can reach 0 on bypassable layers, so a candidate can be
   shallower. Every candidate meets the iteration's target. Each is scored
   by a non-differentiable metric, top-1 accuracy on `data.val`, with weights
   taken from the super-network and BatchNorm statistics re-estimated on
   `bn_batches` training batches (the same seeded batches for every
   candidate); the most accurate becomes the next network (ties: lower
   resource). The search stops when the resource is within the budget.

The resource is `macs` (analytic, `NetAdaptSpace.macs`; else
`core.cost.count_macs` of the built network), `params`, or `latency_ms`: the
sum over `space.layer_specs(arch)` of a `core.cost.LatencyTable` (loaded from
`latency_table` when the file exists, measured on this machine with
`latency_threads` threads otherwise, and saved back to that path). The budget
is `budget` (absolute), `budget_ratio` x R(largest), or the objective's
constraint on the resource metric (`macs <= 2e5`). When the budget cannot be
reached (every layer at its smallest width, or `max_iterations`), the search
stops, warns, and `result["met_budget"]` is False.

This is not an ask/tell strategy but a `core.oneshot.base.Searcher`
(`fit(module, data) -> Arch`, as `DartsSearcher`). `archforge search` calls
`search(context)` -> `fit(None, data)`; it trains the super-network and runs MCD.
`run(supernet, data)` runs MCD on an already trained super-network.
`history` holds one row per MCD iteration, `training` one per epoch.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from core.task import Task
from core.oneshot.base import Searcher
from core.cost import LatencyTable, count_macs, count_params
from core.engine.data import DataSplits, to_device
from core.engine.meter import StepMeter
from core.engine.progress import progress_enabled
from core.engine.registry import STRATEGIES
from core.engine.runs import resume_epoch_state, save_epoch_state
from core.supernet.bn import recalibrate_bn
from core.objective import Objective
from core.api import Arch, SearchSpace

CHECKPOINT_FORMAT = "archforge-netadapt-supernet-1"
RESOURCES = {"macs": "macs", "params": "params", "latency_ms": "latency_ms", "latency": "latency_ms"}


def _num_classes_kwargs(data: DataSplits | None) -> dict[str, int]:
    return {"num_classes": data.num_classes} if data is not None else {}


class OrderedDropoutTrainer:
    """Train a `NetAdaptSupernet` with ordered dropout (NetAdaptV2 Sec. 2.3); `fit()` returns it.

    `history` has one row per epoch: mean training loss and accuracy (of the
    sampled sub-networks), the learning rate and seconds. With `checkpoint`,
    the state is saved atomically after every epoch and a rerun resumes
    from the last completed one (widths and shuffling are seeded per epoch).
    """

    def __init__(self, space: SearchSpace, data: DataSplits, task: Task, epochs: int = 5, batch_size: int = 32,
                 lr: float = 0.2, momentum: float = 0.9, weight_decay: float = 4e-5,
                 grad_clip: float | None = 5.0, per_image: bool = True,
                 steps_per_epoch: int | None = None, seed: int = 0, checkpoint: str | None = None,
                 progress: bool = False, device: str = "cpu", log_every: int = 50):
        if epochs < 0:
            raise ValueError(f"strategy.epochs: expected an integer >= 0, got {epochs!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"strategy.train.steps_per_epoch: expected an integer >= 1 or null, "
                             f"got {steps_per_epoch!r}")
        self.space, self.data, self.task = space, data, task
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.momentum, self.weight_decay = momentum, weight_decay
        self.grad_clip, self.per_image = grad_clip, per_image
        self.steps_per_epoch, self.seed = steps_per_epoch, seed
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.device, self.log_every = progress, torch.device(device), log_every
        self.history: list[dict[str, float]] = []

    def _steps(self) -> int:
        n = math.ceil(len(self.data.train) / self.batch_size)
        return min(n, self.steps_per_epoch) if self.steps_per_epoch else n

    def fit(self, supernet: nn.Module | None = None) -> nn.Module:
        if supernet is None:
            with torch.random.fork_rng(devices=[]):  # a seeded initialisation that leaves the global RNG alone
                torch.manual_seed(self.seed)
                supernet = self.space.supernet(**_num_classes_kwargs(self.data))
        supernet = supernet.to(self.device)
        if not hasattr(supernet, "sample"):
            raise ValueError(f"{type(supernet).__name__} has no sample(): not an ordered-dropout super-network")
        steps = self._steps()
        optimizer = torch.optim.SGD(supernet.parameters(), lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay, nesterov=self.momentum > 0)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, self.epochs * steps))
        start, history, _ = resume_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, "NetAdaptV2 super-network",
                                            self.epochs, state_dict=supernet, optimizer=optimizer, scheduler=scheduler)
        self.history = history or self.history
        bar = tqdm(total=self.epochs * steps, initial=start * steps, desc="NetAdaptV2 super-network", unit="step",
                   disable=not progress_enabled(self.progress), dynamic_ncols=True)
        for epoch in range(start, self.epochs):
            self.history.append(self._epoch(supernet, optimizer, scheduler, epoch, steps, bar))
            if self.checkpoint:
                save_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, epoch + 1, self.history,
                                 state_dict=supernet, optimizer=optimizer, scheduler=scheduler)
        bar.close()
        supernet.activate(None)
        return supernet.eval()

    def _epoch(self, supernet, optimizer, scheduler, epoch, steps, bar) -> dict[str, float]:
        seed = self.seed * 1_000_003 + epoch
        generator = torch.Generator().manual_seed(seed)
        loader = self.task.loader(self.data.train, self.batch_size, shuffle=True, seed=seed + 1)
        supernet.train()
        started = time.perf_counter()
        meter = StepMeter("NetAdaptV2 super-network loss", self.log_every)
        for step, batch in enumerate(loader):
            if step >= steps:
                break
            batch = to_device(batch, self.device)
            n = len(batch[0])
            supernet.sample(n, generator, self.per_image, self.device)
            loss, logs = self.task.loss(supernet, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                nn.utils.clip_grad_norm_(supernet.parameters(), self.grad_clip)
            optimizer.step()
            scheduler.step()
            meter.add(loss=loss.detach().double() * n, correct=logs.get("correct", 0.0), seen=n)
            meter.step(f"of epoch {epoch}")
            bar.update(1)
        sums = meter.totals(f"of epoch {epoch}")
        n = max(sums.get("seen", 0), 1)
        loss_sum, correct = sums.get("loss", 0.0), sums.get("correct", 0.0)
        return {"epoch": epoch, "train_loss": loss_sum / n, "train_accuracy": correct / n,
                "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}


@STRATEGIES.register("netadapt")
class NetAdaptV2Searcher(Searcher):
    """NetAdaptV2 (see the module docstring). `fit(module, data) -> Arch`; `run(supernet, data) -> Arch`."""


    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 resource: str = "macs", budget: float | None = None, budget_ratio: float | None = None,
                 decrement: float | None = None, decrement_ratio: float = 0.1, decrement_decay: float = 1.0,
                 samples: int = 8, layers_per_sample: int = 2, max_iterations: int = 100, epochs: int = 5,
                 train: dict | None = None, bn_batches: int = 4, bn_batch_size: int = 64,
                 eval_batch_size: int = 256, latency_table: str | None = None, latency_threads: int = 1,
                 latency_repeats: int = 20, checkpoint: str | None = None, progress: bool = False,
                 device: str = "cpu", task: Task | None = None):
        self.task = task
        if resource not in RESOURCES:
            raise ValueError(f"strategy.resource: expected one of {sorted(RESOURCES)}, got {resource!r}")
        if budget is not None and budget <= 0:
            raise ValueError(f"strategy.budget: expected a number > 0, got {budget!r}")
        if budget_ratio is not None and not 0 < budget_ratio <= 1:
            raise ValueError(f"strategy.budget_ratio: expected a fraction in (0, 1], got {budget_ratio!r}")
        if budget is not None and budget_ratio is not None:
            raise ValueError("strategy: give budget or budget_ratio, not both")
        if decrement is not None and decrement <= 0:
            raise ValueError(f"strategy.decrement: expected a number > 0, got {decrement!r}")
        if not 0 < decrement_ratio <= 1:
            raise ValueError(f"strategy.decrement_ratio: expected a fraction in (0, 1], got {decrement_ratio!r}")
        if not 0 < decrement_decay <= 1:
            raise ValueError(f"strategy.decrement_decay: expected a number in (0, 1], got {decrement_decay!r}")
        for key, value in (("samples", samples), ("layers_per_sample", layers_per_sample),
                           ("max_iterations", max_iterations)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"strategy.{key}: expected an integer >= 1, got {value!r}")
        if bn_batches < 0:
            raise ValueError(f"strategy.bn_batches: expected an integer >= 0, got {bn_batches!r}")
        if not hasattr(space, "supernet") or not hasattr(space, "extract"):
            raise ValueError(f"strategy netadapt: {type(space).__name__} has no ordered-dropout super-network; "
                             "use space name: netadapt")
        self.space, self.seed = space, seed
        self.objective = objective or Objective()
        self.resource_name = RESOURCES[resource]
        self.budget, self.budget_ratio = budget, budget_ratio
        self.decrement, self.decrement_ratio, self.decrement_decay = decrement, decrement_ratio, decrement_decay
        self.samples, self.layers_per_sample, self.max_iterations = samples, layers_per_sample, max_iterations
        self.epochs, self.train_kwargs = epochs, dict(train or {})
        self.bn_batches, self.bn_batch_size, self.eval_batch_size = bn_batches, bn_batch_size, eval_batch_size
        self.latency_table_path = Path(latency_table) if latency_table else None
        self.latency_threads, self.latency_repeats = latency_threads, latency_repeats
        self.checkpoint, self.progress, self.device = checkpoint, progress, torch.device(device)
        self.rng = random.Random(seed)
        self.history: list[dict[str, Any]] = []
        self.training: list[dict[str, float]] = []
        self.supernet: nn.Module | None = None
        self.arch: Arch | None = None
        self.result: dict[str, Any] = {}
        self._table: LatencyTable | None = None
        self._resource_cache: dict[Arch, float] = {}
        self._accuracy_cache: dict[Arch, float] = {}
        self._num_classes: dict[str, int] = {}
        self._data: DataSplits | None = None

    # -- resources --------------------------------------------------------------------------------
    def table(self) -> LatencyTable:
        if self._table is None:
            path = self.latency_table_path
            if path and path.is_file():
                self._table = LatencyTable.load(path)
                problems = self._table.mismatch(threads=self.latency_threads)
                if problems:
                    raise ValueError(f"strategy.latency_table: {path} was measured elsewhere: " + "; ".join(problems))
            else:
                self._table = LatencyTable(threads=self.latency_threads, warmup=max(2, self.latency_repeats // 4),
                                           repeats=self.latency_repeats)
        return self._table

    def _input_size(self) -> Any:
        return self._data.input_shape[1:] if self._data is not None else None

    def resource(self, arch: Mapping[str, Any]) -> float:
        """The arch's resource (MACs, parameters or LUT latency in ms), cached per arch."""
        arch = self.space.check(arch)
        if arch in self._resource_cache:
            return self._resource_cache[arch]
        if self.resource_name == "macs":
            if hasattr(self.space, "macs"):
                value = float(self.space.macs(arch, self._input_size(), **self._num_classes))
            else:
                shape = (1, *self._data.input_shape) if self._data is not None else (1, 3, 32, 32)
                value = float(count_macs(self.space.build(arch, **self._num_classes), shape))
        elif self.resource_name == "params":
            value = float(count_params(self.space.build(arch, **self._num_classes)))
        else:
            table = self.table()
            before = len(table)
            value = table.predict_arch(self.space, arch, input_size=self._input_size(), **self._num_classes)
            if self.latency_table_path and len(table) > before:
                table.save(self.latency_table_path)
        self._resource_cache[arch] = value
        return value

    def resolve_budget(self, largest: float) -> float:
        if self.budget is not None:
            return float(self.budget)
        if self.budget_ratio is not None:
            return float(self.budget_ratio * largest)
        for c in self.objective.constraints:
            if c.metric == self.resource_name and c.op in ("<=", "<"):
                return float(c.bound)
        raise ValueError(f"strategy.budget: set budget, budget_ratio or an objective constraint "
                         f"'{self.resource_name} <= N' to tell NetAdaptV2 where to stop")

    # -- scoring ----------------------------------------------------------------------------------
    def _prepare(self, data: DataSplits) -> None:
        self._data = data
        self._num_classes = {"num_classes": data.num_classes}
        loader = self.task.loader(data.train, self.bn_batch_size, shuffle=True, seed=self.seed)
        self._bn_data = []
        for x, *_ in loader:
            if len(self._bn_data) == self.bn_batches:
                break
            self._bn_data.append(x.to(self.device))
        self._val_data = [to_device(batch, self.device)
                          for batch in self.task.loader(data.val, self.eval_batch_size)]

    @torch.no_grad()
    def evaluate(self, arch: Mapping[str, Any], supernet: nn.Module | None = None) -> float:
        """The task's primary metric (top-1 accuracy for classification, the paper's) on `data.val` of `arch`
        with the super-network's weights, BN re-estimated; negated when lower is better, so larger is better.

        The super-network's buffers are restored afterwards, so scores do not
        depend on the order of evaluation.
        """
        arch = self.space.check(arch)
        if supernet is None and arch in self._accuracy_cache:
            return self._accuracy_cache[arch]
        model = supernet if supernet is not None else self.supernet
        if model is None or self._data is None:
            raise RuntimeError("evaluate: no trained super-network; call fit() or run() first")
        snapshot = {k: v.detach().clone() for k, v in model.named_buffers()}
        try:
            model.activate(arch)
            if self._bn_data:
                recalibrate_bn(model, [(x,) for x in self._bn_data])
            model.eval()
            score = float(self.task.score(model, self._val_data)[self.task.primary_metric])
        finally:
            with torch.no_grad():
                for name, value in model.named_buffers():
                    value.copy_(snapshot[name])
            model.activate(None)
        accuracy = score if self.task.higher_is_better else -score
        if supernet is None:
            self._accuracy_cache[arch] = accuracy
        return accuracy

    # -- MCD ----------------------------------------------------------------------------------------
    def _shrink(self, values: dict[str, Any], name: str) -> bool:
        """Move `name` one option down; False when it is already at its smallest."""
        options = self.space.choice(name).options
        index = options.index(values[name])
        if index == 0:
            return False
        values[name] = options[index - 1]
        return True

    def candidate(self, arch: Arch, target: float, rng: random.Random) -> tuple[Arch, list[str]] | None:
        """One MCD sample: L random layers shrunk at once until the resource is <= target (None: impossible)."""
        current = self.resource(arch)
        shrinkable = [n for n in self.space.names if self.space.choice(n).index(arch[n]) > 0]
        if not shrinkable:
            return None
        chosen = rng.sample(shrinkable, min(self.layers_per_sample, len(shrinkable)))
        share = (current - target) / len(chosen)
        values = arch.to_dict()
        for name in chosen:  # NetAdaptV1's per-layer rule with an equal share: the widest width reducing >= share
            single = arch.to_dict()
            while self._shrink(single, name):
                if current - self.resource(Arch(single)) >= share:
                    break
            values[name] = single[name]
        turn = 0
        while self.resource(Arch(values)) > target:
            movable = [n for n in chosen if self.space.choice(n).index(values[n]) > 0]
            if not movable:
                rest = [n for n in self.space.names if n not in chosen and self.space.choice(n).index(values[n]) > 0]
                if not rest:
                    return None
                chosen.append(rng.choice(rest))
                continue
            self._shrink(values, movable[turn % len(movable)])
            turn += 1
        return self.space.check(Arch(values)), chosen

    def run(self, supernet: nn.Module, data: DataSplits) -> Arch:
        """MCD on a trained super-network (see the module docstring); returns the final arch."""
        self.supernet = supernet.to(self.device).eval()
        self._prepare(data)
        self._resource_cache.clear()
        self._accuracy_cache.clear()
        rng = random.Random(self.seed)
        arch = self.space.check(Arch({c.name: c.options[-1] for c in self.space.choices}))
        largest = self.resource(arch)
        budget = self.resolve_budget(largest)
        step = self.decrement if self.decrement is not None else self.decrement_ratio * largest
        accuracy = self.evaluate(arch)
        self.history = [{"iteration": 0, "target": largest, "resource": largest, "accuracy": accuracy,
                         "candidates": 1, "layers": [], "arch": arch.to_dict()}]
        bar = tqdm(desc=f"NetAdaptV2 MCD ({self.resource_name} -> {budget:.4g})", unit="iter",
                   disable=not progress_enabled(self.progress), dynamic_ncols=True)
        reached = largest <= budget
        for t in range(self.max_iterations):
            if reached:
                break
            current = self.resource(arch)
            target = max(budget, current - step * self.decrement_decay ** t)
            scored = []
            for _ in range(self.samples):
                made = self.candidate(arch, target, rng)
                if made is None:
                    continue
                cand, layers = made
                scored.append((self.evaluate(cand), -self.resource(cand), len(scored), cand, layers))
            if not scored:
                break
            accuracy, neg_resource, _, arch, layers = max(scored, key=lambda s: (s[0], s[1], -s[2]))
            reached = -neg_resource <= budget
            self.history.append({"iteration": t + 1, "target": target, "resource": -neg_resource,
                                 "accuracy": accuracy, "candidates": len(scored), "layers": sorted(layers),
                                 "arch": arch.to_dict()})
            bar.update(1)
            bar.set_postfix({self.resource_name: f"{-neg_resource:.4g}", "acc": f"{accuracy:.3f}"}, refresh=False)
        bar.close()
        if self.resource(arch) > budget:
            warnings.warn(f"NetAdaptV2: stopped at {self.resource_name} {self.resource(arch):.4g} above the budget "
                          f"{budget:.4g} (no layer left to shrink, or max_iterations={self.max_iterations} reached)",
                          RuntimeWarning, stacklevel=2)
        self.arch = arch
        self.result = {"arch": arch.to_dict(), "accuracy": self.history[-1]["accuracy"],
                       self.resource_name: self.resource(arch), "budget": budget, "largest": largest,
                       "met_budget": self.resource(arch) <= budget, "iterations": len(self.history) - 1,
                       "evaluations": len(self._accuracy_cache)}
        return arch

    def train_supernet(self, data: DataSplits, supernet: nn.Module | None = None) -> nn.Module:
        """Ordered-dropout training (`epochs`, with `train` keyword arguments for OrderedDropoutTrainer)."""
        kwargs = {"seed": self.seed, "checkpoint": self.checkpoint, "progress": self.progress,
                  "device": str(self.device), **self.train_kwargs}
        trainer = OrderedDropoutTrainer(self.space, data, self.task, epochs=self.epochs, **kwargs)
        model = trainer.fit(supernet)
        self.training = trainer.history
        return model

    def fit(self, module: nn.Module | None, data: DataSplits) -> Arch:
        """Train the super-network (`module`, or `space.supernet()` when None) with ordered dropout, then MCD."""
        if self.task is None:
            raise ValueError("NetAdaptV2 needs a task (its loss and score): NetAdaptV2Searcher(..., task=...)")
        self.supernet = self.train_supernet(data, module)
        return self.run(self.supernet, data)
