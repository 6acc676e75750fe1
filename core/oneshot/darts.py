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

Speed on a GPU. A DARTS step on the paper's supernet (C=16, 8 cells, batch
64, 32 px) runs thousands of small kernels, so the GPU mostly waits for
Python to launch them. The loop never waits for the host (the bilevel loop's
device-side batches and step sums; the second-order step without host
reads), and five levers, each off by default, cut the launch cost further:

- `fused_edges`: each edge runs its two separable convs as one grouped conv
  chain and its two dilated convs as another (3x3 kernels zero-padded to
  5x5), skips the `none` op (its output is 0), and sums the candidates in one
  op (`core.zoo.darts.fuse_edges`); the same function, same weights;
- `channels_last`: NHWC memory format for the supernet and its inputs;
- `precision: bf16`: forward passes under bfloat16 autocast (weights,
  gradients and optimiser states stay float32; the outputs are cast back to
  float32 before the loss); `fp16` is refused: float16 needs loss scaling,
  which this loop does not do;
- `compile`: `torch.compile` of the supernet (`true`, a mode such as
  `max-autotune-no-cudagraphs`, or a backend name);
- `cuda_graphs`: the whole step (architecture step + weight step, optimisers
  included) is captured as a CUDA graph after two eager steps, once per
  epoch (the learning rate and the relaxation's settings are fixed within
  one), and replayed for every batch of the captured shapes (softmax and
  Gumbel relaxations; CUDA only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from core.api import Arch, SearchSpace, choice_modules, derive
from core.api.relax import RELAXATIONS, relax
from core.engine.data import DataSplits
from core.engine.registry import STRATEGIES, ConfigError
from core.objective import Objective
from core.oneshot.bilevel import BilevelSearcher
from core.supernet.spos import build_supernet
from core.task import Task

RELAXATION_NAMES = ("softmax", "gumbel", "sparsestmax", "sparsemax")
#: `precision` values ("32" is the older spelling of "fp32")
PRECISIONS = ("fp32", "32", "bf16")
#: relaxations a CUDA graph can replay (the sparse ones read their weights on the host every step)
GRAPH_RELAXATIONS = ("softmax", "gumbel")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
#: eager steps before a step is captured as a CUDA graph (they also create the optimiser states)
GRAPH_WARMUP = 2


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
                 progress: bool = False, device: str = "cpu", task: Task | None = None, log_every: int = 50,
                 fused_edges: bool = False, channels_last: bool = False, precision: str = "fp32",
                 compile: bool | str = False, cuda_graphs: bool = False):
        if precision == "fp16":
            raise ConfigError("strategy.precision: fp16 needs loss scaling, which the DARTS step does not do; "
                              "use bf16 (or fp32)")
        if precision not in PRECISIONS:
            raise ConfigError(f"strategy.precision: expected fp32 or bf16, got {precision!r}")
        if compile is not False and compile is not True and compile not in COMPILE_MODES + COMPILE_BACKENDS:
            raise ConfigError(f"strategy.compile: expected true, false, a mode {COMPILE_MODES} or a backend "
                              f"{COMPILE_BACKENDS}, got {compile!r}")
        if cuda_graphs and torch.device(device).type != "cuda":
            raise ConfigError(f"strategy.cuda_graphs: needs device cuda (CUDA graphs replay GPU kernels), "
                              f"got device {device!r}")
        if cuda_graphs and relaxation not in GRAPH_RELAXATIONS:
            raise ConfigError(f"strategy.cuda_graphs: needs a relaxation in {GRAPH_RELAXATIONS} (the sparse ones "
                              f"read their weights on the host every step), got {relaxation!r}")
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
                         task=task, log_every=log_every)
        self.supernet_kwargs = dict(supernet or {})
        self.fused_edges, self.channels_last, self.compile = bool(fused_edges), bool(channels_last), compile
        self.precision = "fp32" if precision == "32" else precision
        self.cuda_graphs = bool(cuda_graphs)
        self._forward: _Forward | None = None
        self._graph: _GraphedStep | None = None
        self._graph_key: Any = None
        self._eager_steps = 0
        self.relax_kwargs_now: dict[str, Any] = {}

    def progress_label(self) -> str:
        return f"DARTS ({self.relaxation}, order {self.order})"

    # -- the bilevel loop's pieces --------------------------------------------------------------------
    def prepare(self, data: DataSplits) -> None:
        if self.task is None:
            raise ValueError("DARTS needs a task (the loss of a batch): DartsSearcher(..., task=...)")

    def build_supernet(self, data: DataSplits) -> nn.Module:
        return build_supernet(self.space, data.num_classes, **self.supernet_kwargs)

    def setup(self, model: nn.Module) -> None:
        """Switch on the speed levers asked for on the supernet (already on the device): channels-last,
        fused edges, compile (the compiled forward is kept aside, sharing the supernet's parameters)."""
        super().setup(model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.fused_edges:
            from core.zoo.darts.fused import fuse_edges

            if not fuse_edges(model):
                raise ConfigError(f"strategy.fused_edges: {type(model).__name__} has no DARTS search cell whose "
                                  "edges can be fused (the 8 DARTS ops)")
        compiled = None
        if self.compile:
            kind = "mode" if self.compile in COMPILE_MODES else "backend"
            compiled = torch.compile(model, **({} if self.compile is True else {kind: self.compile}))
        self._forward = None
        if compiled is not None or self.channels_last or self.precision == "bf16":
            self._forward = _Forward(model, compiled, self.channels_last, self.precision == "bf16")
        self._graph, self._graph_key, self._eager_steps = None, None, 0

    def arch_optimizer(self, alphas: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Adam; its step counter lives on the device when the step is replayed as a CUDA graph."""
        return torch.optim.Adam(alphas, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay,
                                capturable=self.cuda_graphs)

    def forward_of(self, model: nn.Module) -> Callable[..., Any]:
        """What runs `model`'s forward: the levers' wrapper (compiled, channels-last inputs, bf16 autocast)
        for the searched supernet, else the module itself."""
        return self._forward if self._forward is not None and model is self.supernet else model

    def train_step(self, model, batch, val_batch, warmup, alphas, weights, w_opt, a_opt, draw=None):
        """The bilevel step; with `cuda_graphs`, two eager steps on a side stream, then the step captured once
        (per learning rate and relaxation setting: once per epoch) and replayed for batches of the same shapes."""
        if not self.cuda_graphs or batch is None or val_batch is None:
            return super().train_step(model, batch, val_batch, warmup, alphas, weights, w_opt, a_opt, draw)

        def step(*b):
            return BilevelSearcher.train_step(self, model, b[0], b[1], warmup, alphas, weights, w_opt, a_opt)

        key = (w_opt.param_groups[0]["lr"], repr(self.relax_kwargs_now))
        if key != self._graph_key:
            self._graph, self._graph_key, self._eager_steps = None, key, 0
        inputs = (batch, val_batch)
        if self._graph is None and self._eager_steps >= GRAPH_WARMUP:
            self._graph = _GraphedStep(step, inputs)
        if self._graph is not None and self._graph.accepts(inputs):
            return self._graph(inputs)
        self._eager_steps += 1
        return _on_side_stream(lambda: step(*inputs))

    def relax(self, model: nn.Module, epoch: int, step: int, steps: int) -> None:
        self.relax_kwargs_now = self.relax_kwargs(epoch, step, steps)
        super().relax(model, epoch, step, steps)

    def init_architecture(self, alphas: list[nn.Parameter]) -> None:
        """Logits with all entries equal restart at 1e-3 * N(0, 1) (DARTS's `_initialize_alphas`)."""
        gen = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for a in alphas:
                if a.numel() > 1 and bool((a == a.reshape(-1)[0]).all()):
                    a.copy_(1e-3 * torch.randn(a.shape, generator=gen).to(a))

    def weight_loss(self, model: nn.Module, batch: Any, warmup: bool) -> tuple[torch.Tensor, dict[str, Any]]:
        """The task's loss; its sums (loss x n, correct, n) stay on the device."""
        loss, logs = self.task.loss(self.forward_of(model), batch)
        n = int(logs.get("n", 1))
        return loss, {"train_loss": loss.detach() * n, "correct": logs.get("correct", 0.0), "n_train": n}

    def arch_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.forward_of(model), batch)[0], {}

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


class _Forward:
    """The supernet's forward with the levers on: inputs in channels-last, the compiled module when there is
    one, bf16 autocast with floating outputs cast back to float32."""

    def __init__(self, model: nn.Module, compiled: Callable[..., Any] | None, channels_last: bool, bf16: bool):
        self.model, self.run = model, compiled if compiled is not None else model
        self.channels_last, self.bf16 = channels_last, bf16

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.channels_last and torch.is_tensor(x) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.bf16 or not torch.is_tensor(x) or not torch.amp.is_autocast_available(x.device.type):
            return self.run(x, *args, **kwargs)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.run(x, *args, **kwargs)
        return tree_map(lambda t: t.float() if torch.is_tensor(t) and t.is_floating_point() else t, out)


def _on_side_stream(fn: Callable[[], Any]) -> Any:
    """Run `fn` on a side CUDA stream, as eager steps before a graph capture must (torch.cuda.graphs docs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


class _GraphedStep:
    """A step captured as a CUDA graph: each batch is copied into static inputs and the graph replayed.

    Capturing records the kernels without running them, so the parameters, buffers and optimiser states
    are those the eager steps before it left, and every replay is one real step. `step(*inputs)` returns a
    tree of tensors and plain values (the plain values are those of the capture)."""

    def __init__(self, step: Callable[..., Any], example: tuple[Any, ...]):
        self.inputs = tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, example)
        leaves, self.spec = tree_flatten(self.inputs)
        self.shapes = [(t.shape, t.dtype) if torch.is_tensor(t) else t for t in leaves]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = step(*self.inputs)

    def accepts(self, inputs: tuple[Any, ...]) -> bool:
        leaves, spec = tree_flatten(inputs)
        return spec == self.spec and [(t.shape, t.dtype) if torch.is_tensor(t) else t for t in leaves] == self.shapes

    def __call__(self, inputs: tuple[Any, ...]) -> Any:
        for static, value in zip(tree_flatten(self.inputs)[0], tree_flatten(inputs)[0]):
            if torch.is_tensor(static):
                static.copy_(value)
        self.graph.replay()
        return tree_map(lambda t: t.clone() if torch.is_tensor(t) else t, self.outputs)


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


__all__ = ["DartsSearcher", "darts_derive", "RELAXATION_NAMES", "PRECISIONS", "COMPILE_MODES", "COMPILE_BACKENDS"]
