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
(SSN, `core.space.sparsestmax`; its radius follows the linear schedule over
all steps, one-hot at the end) and `sparsemax`.

Derivation: on a `DartsSpace` the DARTS rule (Sec. 2.4): per node the two
strongest incoming edges (strength: the largest non-`none` weight), each
with its strongest non-`none` op; weights are the relaxation's (softmax as
in the paper, or the final sparsestmax weights, ties broken by the softmax
of the logits). On other spaces each choice takes its largest logit
(`core.space.derive`), choices missing from the supernet keep their
defaults, and the space's `check` canonicalises it.

This is a gradient-based searcher, not ask/tell: `gradient_based = True`;
the search tool calls `fit(None, data)` (a supernet is built from the space)
and gets the derived `Arch`. `fit` checkpoints after each epoch when
`checkpoint` is set, and resumes from it.

Speed on a GPU. A DARTS step on the paper's supernet (C=16, 8 cells, batch
64, 32 px) runs thousands of small kernels, so the GPU mostly waits for
Python to launch them. The loop itself never waits for the host (batches
gathered on the device, loss and accuracy summed there and read every
`log_every` steps, the second-order step without host reads), and five levers,
each off by default, cut the launch cost further (docs/scaling.md has their
measured effect):

- `fused_edges`: each edge runs its two separable convs as one grouped conv
  chain and its two dilated convs as another (3x3 kernels zero-padded to
  5x5), skips the `none` op (its output is 0), and sums the candidates in one
  op (`core.spaces.darts.fuse_edges`); the same function, same weights;
- `channels_last`: NHWC memory format for the supernet and its inputs;
- `precision: bf16`: forward passes under bfloat16 autocast (weights,
  gradients and optimiser states stay float32);
- `compile`: `torch.compile` of the supernet (`true`, or a mode such as
  `max-autotune-no-cudagraphs`, or a backend name);
- `cuda_graphs`: the whole step (architecture step + weight step, optimisers
  included) is captured once per epoch as a CUDA graph and replayed for every
  full batch (softmax and Gumbel relaxations; CUDA only).
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

import core.space.sparsestmax  # noqa: F401 - registers the sparsestmax and sparsemax relaxations
from core.engine.data import DataSplits, DeviceBatches, cycle, split_indices
from core.engine.meter import StepMeter
from core.engine.registry import STRATEGIES
from core.engine.runs import resume_epoch_state, save_epoch_state
from core.evaluation.train import classification_loss
from core.objective import Objective
from core.space import Arch, SearchSpace, architecture_parameters, choice_modules, derive, set_mixture
from core.space.relax import RELAXATIONS, relax
from core.strategies.spos import _progress_enabled, build_supernet

CHECKPOINT_FORMAT = "archforge-darts-1"
RELAXATION_NAMES = ("softmax", "gumbel", "sparsestmax", "sparsemax")
PRECISIONS = ("32", "bf16")
GRAPH_RELAXATIONS = ("softmax", "gumbel")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


@STRATEGIES.register("darts")
class DartsSearcher:
    """DARTS search (see the module docstring). `fit(module, data) -> Arch`."""

    gradient_based = True

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None, epochs: int = 50,
                 order: int = 1, relaxation: str = "softmax", batch_size: int = 64, train_portion: float = 0.5,
                 lr: float = 0.025, lr_min: float = 0.001, momentum: float = 0.9, weight_decay: float = 3e-4,
                 grad_clip: float | None = 5.0, arch_lr: float = 3e-4, arch_betas: tuple[float, float] = (0.5, 0.999),
                 arch_weight_decay: float = 1e-3, unrolled_eps: float = 0.01,
                 temperature: tuple[float, float] = (10.0, 0.1), hard: bool = False, end_fraction: float = 1.0,
                 steps_per_epoch: int | None = None, supernet: dict | None = None, checkpoint: str | None = None,
                 progress: bool = False, device: str = "cpu", log_every: int = 50, fused_edges: bool = False,
                 channels_last: bool = False, precision: str = "32", compile: bool | str = False,
                 cuda_graphs: bool = False):
        if order not in (1, 2):
            raise ValueError(f"strategy.order: expected 1 (first order) or 2 (second order), got {order!r}")
        if relaxation not in RELAXATION_NAMES:
            raise ValueError(f"strategy.relaxation: expected one of {RELAXATION_NAMES}, got {relaxation!r}")
        if relaxation not in RELAXATIONS:
            raise ValueError(f"strategy.relaxation: {relaxation!r} is not registered in core.space.relax")
        if not 0 < train_portion < 1:
            raise ValueError(f"strategy.train_portion: expected a fraction in (0, 1), got {train_portion!r}")
        if epochs < 1:
            raise ValueError(f"strategy.epochs: expected an integer >= 1, got {epochs!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"strategy.steps_per_epoch: expected an integer >= 1 or null, got {steps_per_epoch!r}")
        if len(temperature) != 2 or min(temperature) <= 0:
            raise ValueError(f"strategy.temperature: expected [start, end] > 0, got {temperature!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"strategy.precision: expected one of {PRECISIONS}, got {precision!r}")
        if cuda_graphs and relaxation not in GRAPH_RELAXATIONS:
            raise ValueError(f"strategy.cuda_graphs: needs a relaxation in {GRAPH_RELAXATIONS} (the sparse ones read "
                             f"their weights on the host every step), got {relaxation!r}")
        if cuda_graphs and torch.device(device).type != "cuda":
            raise ValueError(f"strategy.cuda_graphs: needs device cuda, got {device!r}")
        if compile is not False and compile is not True and compile not in COMPILE_MODES + COMPILE_BACKENDS:
            raise ValueError(f"strategy.compile: expected true, false, a mode {COMPILE_MODES} or a backend "
                             f"{COMPILE_BACKENDS}, got {compile!r}")
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
        self.log_every, self.fused_edges, self.channels_last = log_every, fused_edges, channels_last
        self.precision, self.compile, self.cuda_graphs = precision, compile, cuda_graphs
        self.history: list[dict[str, Any]] = []
        self.supernet: nn.Module | None = None
        self.arch: Arch | None = None
        self.loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] = classification_loss
        self._forward: nn.Module | None = None

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
    def _loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self._run(model, x), y)

    def _run(self, model: nn.Module, x: torch.Tensor) -> Any:
        """`model(x)` through the compiled supernet when `compile` is on, under bf16 autocast when asked."""
        if model is self.supernet and self._forward is not None:
            model = self._forward
        if self.precision != "bf16" or not torch.amp.is_autocast_available(x.device.type):
            return model(x)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):  # no cache: CUDA graphs
            return model(x)

    def arch_gradients_first_order(self, model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor,
                                   alphas: list[nn.Parameter]) -> list[torch.Tensor]:
        loss = self._loss(model, x_val, y_val)
        grads = torch.autograd.grad(loss, alphas, allow_unused=True)
        return [torch.zeros_like(a) if g is None else g for a, g in zip(alphas, grads)]

    def arch_gradients_second_order(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                                    x_val: torch.Tensor, y_val: torch.Tensor, alphas: list[nn.Parameter],
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
            loss = self._loss(model, x_train, y_train)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            with torch.no_grad():
                for w, g in zip(weights, grads):
                    step = (torch.zeros_like(w) if g is None else g) + self.weight_decay * w
                    state = optimizer.state.get(w, {}) if optimizer is not None else {}
                    if state.get("momentum_buffer") is not None:
                        step = step + self.momentum * state["momentum_buffer"]
                    w.sub_(eta * step)
            # grad_alpha L_val(w', alpha) and v = grad_w' L_val(w', alpha)
            loss = self._loss(model, x_val, y_val)
            grads = torch.autograd.grad(loss, list(alphas) + list(weights), allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(list(alphas) + list(weights), grads)]
            d_alpha, vector = grads[:len(alphas)], grads[len(alphas):]
            # Hessian-vector product by central differences around w (architect._hessian_vector_product)
            norm = torch.sqrt(sum((v * v).sum() for v in vector))
            # r = eps / ||v|| as a device scalar (no host read); a zero v gives a zero implicit term
            r = self.unrolled_eps / norm.clamp_min(torch.finfo(norm.dtype).tiny)
            implicit = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for w, w0, v in zip(weights, backup, vector):
                        w.copy_(w0 + sign * r * v)
                loss = self._loss(model, x_train, y_train)
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
    def fit(self, module: nn.Module | None, data: DataSplits,
            loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None) -> Arch:
        """Search on `data.train` (split in two halves) and return the derived arch.

        `module` is the supernet to search (None: `space.supernet(**supernet)`
        with the data's number of classes); `loss_fn(output, target)`
        defaults to cross-entropy (a DARTS auxiliary head weighs 0.4).
        """
        self.loss_fn = loss_fn or classification_loss
        if module is None:
            torch.manual_seed(self.seed)  # the same initial weights for the same seed
            module = build_supernet(self.space, data.num_classes, **self.supernet_kwargs)
        model = self.prepare(module)
        alphas = architecture_parameters(model)
        self._break_ties(alphas)
        alpha_ids = {id(a) for a in alphas}
        weights = [p for p in model.parameters() if id(p) not in alpha_ids and p.requires_grad]
        w_opt = torch.optim.SGD(weights, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        a_opt = torch.optim.Adam(alphas, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay,
                                 capturable=self.cuda_graphs)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, self.epochs, eta_min=self.lr_min)
        start_epoch, history, _ = resume_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, "DARTS", self.epochs,
                                                  state_dict=model, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
        self.history = history or self.history

        train_half, val_half = self._halves(data)
        steps = math.ceil(len(train_half) / self.batch_size)
        steps = min(steps, self.steps_per_epoch) if self.steps_per_epoch else steps
        bar = tqdm(total=self.epochs * steps, initial=start_epoch * steps, desc=f"DARTS ({self.relaxation}, "
                   f"order {self.order})", unit="step", disable=not _progress_enabled(self.progress),
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

    def prepare(self, module: nn.Module) -> nn.Module:
        """Move the supernet to the device and switch on the levers asked for (fused edges, channels-last,
        compile); returns the supernet (the compiled forward is kept aside, sharing its parameters)."""
        model = module.to(self.device)
        if not choice_modules(model):
            raise ValueError(f"{type(model).__name__} has no ChoiceModule: nothing to search")
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.fused_edges:
            from core.spaces.darts import fuse_edges

            if not fuse_edges(model):
                raise ValueError(f"strategy.fused_edges: {type(model).__name__} has no DARTS search cell whose "
                                 "edges can be fused")
        self.supernet = model
        self._forward = None
        if self.compile:
            kind = "mode" if self.compile in COMPILE_MODES else "backend"
            options = {} if self.compile is True else {kind: self.compile}
            self._forward = torch.compile(model, **options)
        return model

    def _break_ties(self, alphas: list[nn.Parameter]) -> None:
        """Logits with all entries equal (a supernet's zero init) restart at 1e-3 * N(0, 1), DARTS's
        `_initialize_alphas`; sparse relaxations have no gradient at exact ties (see core.space.sparsestmax)."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for a in alphas:
                if a.numel() > 1 and bool((a == a.reshape(-1)[0]).all()):
                    a.copy_(1e-3 * torch.randn(a.shape, generator=gen).to(a))

    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
             alphas: list[nn.Parameter], weights: list[nn.Parameter], w_opt: torch.optim.Optimizer,
             a_opt: torch.optim.Optimizer, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One search step (Alg. 1): the architecture step on a validation-half batch, then the weight step on
        a training-half batch. Returns the training loss and logits, still on the device (no host read)."""
        if self.order == 1:
            grads = self.arch_gradients_first_order(model, x_val, y_val, alphas)
        else:
            grads = self.arch_gradients_second_order(model, x, y, x_val, y_val, alphas, weights, eta, w_opt)
        for a, g in zip(alphas, grads):
            a.grad = g.detach()
        a_opt.step()
        a_opt.zero_grad(set_to_none=True)
        output = self._run(model, x)
        loss = self.loss_fn(output, y)
        w_opt.zero_grad(set_to_none=True)
        loss.backward(inputs=weights)
        if self.grad_clip:
            nn.utils.clip_grad_norm_(weights, self.grad_clip)
        w_opt.step()
        logits = output[0] if isinstance(output, tuple) else output
        return loss.detach(), logits.detach()

    def _epoch(self, model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, bar) -> dict:
        seed = self.seed * 1_000_003 + epoch
        torch.manual_seed(seed)
        train_batches = DeviceBatches(train_half, self.batch_size, shuffle=True, device=self.device,
                                      generator=torch.Generator().manual_seed(seed))
        val_batches = cycle(DeviceBatches(val_half, self.batch_size, shuffle=True, device=self.device,
                                          generator=torch.Generator().manual_seed(seed + 1)))
        model.train()
        started = time.perf_counter()
        meter = StepMeter("DARTS training loss", self.log_every)
        eta = w_opt.param_groups[0]["lr"]
        graph = None
        for step, (x, y) in enumerate(train_batches):
            if step >= steps:
                break
            x_val, y_val = next(val_batches)
            if self.channels_last:
                x, x_val = x.contiguous(memory_format=torch.channels_last), \
                    x_val.contiguous(memory_format=torch.channels_last)
            set_mixture(model, self.relaxation, **self.relax_kwargs(epoch, step, steps))
            batch = (x, y, x_val, y_val)
            full = len(y) == self.batch_size and len(y_val) == self.batch_size
            if self.cuda_graphs and full and step >= _GRAPH_WARMUP:
                if graph is None:  # the schedule's lr and temperature are fixed within an epoch: capture once
                    graph = _GraphedStep(lambda *b: self.step(model, *b, alphas, weights, w_opt, a_opt, eta), batch)
                loss, logits = graph(*batch)
            elif self.cuda_graphs:
                loss, logits = _on_side_stream(lambda: self.step(model, *batch, alphas, weights, w_opt, a_opt, eta))
            else:
                loss, logits = self.step(model, *batch, alphas, weights, w_opt, a_opt, eta)
            meter.add(loss=loss * len(y), correct=(logits.argmax(1) == y).sum(), seen=len(y))
            meter.step(f"of epoch {epoch}")
            bar.update(1)
        sums = meter.totals(f"of epoch {epoch}")
        n = max(sums.get("seen", 0), 1)
        arch = self.derive(model)
        return {"epoch": epoch, "train_loss": sums.get("loss", 0.0) / n, "train_accuracy": sums.get("correct", 0.0) / n,
                "lr": eta, "seconds": time.perf_counter() - started, "arch": arch.to_dict()}

    # -- derivation -----------------------------------------------------------------------------------
    def derive(self, supernet: nn.Module | None = None) -> Arch:
        """The arch the searched supernet stands for (DARTS rule on a DartsSpace, else argmax per choice)."""
        supernet = supernet if supernet is not None else self.supernet
        if supernet is None:
            raise RuntimeError("derive: no supernet; call fit() first")
        from core.spaces.darts import DartsSpace

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


#: eager steps at the start of each epoch before the step is captured (they also create the optimiser states)
_GRAPH_WARMUP = 2


def _on_side_stream(fn: Callable[[], Any]) -> Any:
    """Run `fn` on a side CUDA stream, as eager steps before a graph capture must (torch.cuda.graphs docs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


class _GraphedStep:
    """A step captured as a CUDA graph: the batch is copied into static inputs and the graph replayed.

    Capturing records the kernels without running them, so the parameters, buffers and optimiser
    states are those the eager steps before it left, and every replay is one real step."""

    def __init__(self, step: Callable[..., tuple[torch.Tensor, torch.Tensor]], example: tuple[torch.Tensor, ...]):
        self.inputs = tuple(t.clone() for t in example)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(*self.inputs)

    def __call__(self, *batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for static, value in zip(self.inputs, batch):
            static.copy_(value)
        self.graph.replay()
        return tuple(t.clone() for t in self.outputs)


def darts_derive(space, supernet: nn.Module, weights_fn: Callable[[torch.Tensor], torch.Tensor]) -> Arch:
    """The DARTS rule (`core.spaces.darts`) on the weights `weights_fn(logits)` of each edge.

    With softmax weights this is exactly `DartsSpace.derive`; other relaxations rank the edges by their own weights.
    """
    from core.spaces.darts import CELL_TYPES, Genotype, _parse_cell, _steps_for_edges, genotype_to_arch

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
        fields[cell] = _parse_cell(edge_weights, ops)
        fields[f"{cell}_concat"] = list(range(2, _steps_for_edges(len(edge_weights)) + 2))
    return space.check(genotype_to_arch(Genotype(**fields)))


__all__ = ["DartsSearcher", "darts_derive", "RELAXATION_NAMES"]
