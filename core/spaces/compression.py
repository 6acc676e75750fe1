"""ESNAC's compression search space: remove layers, shrink channels and add skips to a teacher network.

Cao, Wang, Kitani. "Learnable Embedding Space for Efficient Neural
Architecture Compression", ICLR 2019 (arXiv 1902.00383), Sec. 3.2 and 6.5;
official code github.com/Friedrich1006/ESNAC (`architecture.py`, `graph.py`,
`options.py`, `compression.py`).

The teacher is read as a chain of layers: the leaf modules of a sequential
network (nested `nn.Sequential`s, or any module whose forward runs its
children in order; a flatten is inserted before the first `nn.Linear` that
gets an image, as torchvision's VGG and AlexNet do in `forward`). The chain
is checked against the teacher's own output. Layer j reads the sum of its
predecessor and of every skip into it; the student inherits the teacher's
weights (the first channels of every shrunk layer, as the official
`comp_arch`) and is then trained by distillation.

Decisions (the official action vector, one `Choice` each):

    layer{i}.remove   False | True     only where the layer's input and output shapes agree;
                                       a removed layer becomes an identity
    width{F}.shrink   0, 1/8, .. 7/8   one ratio per channel group: every conv / linear that outputs
                                       F channels keeps max(1, int((1 - ratio) F)) of them, so shapes
                                       that agreed in the teacher still agree (the official grouping
                                       by channel count); the logits layer never shrinks
    skip.{i}.{j}      False | True     add layer i's output to layer j's input, for j > i + 1 where
                                       the teacher's shapes agree; inactive when layer j is removed

`sample(rng)` follows the official random compression (`comp_action_rand`):
a removal probability p1 ~ U{0.3, 0.4, 0.5, 0.6, 0.7} per arch, a shrink
ratio per group, a skip probability p3 ~ U{0.003, 0.005, 0.01, 0.03, 0.05}
per arch. Deviation: the ratio is drawn from a grid of `shrink_levels` (8)
values instead of U(0, 1), so an Arch stays a finite set of choices.

`layer_descriptors(arch)` gives ESNAC's per-layer representation: a one-hot
over the 10 official types (Identity, Flatten, Concat, Shuffle, Conv2d,
MaxPool, AvgPool, ReLU, BN, Linear), [kernel, stride, padding, groups, in,
out] of the student's layer, and one-hot in-link and out-link offsets over
the teacher's number of layers (the official `ar_max_layers`, 128 there).

`compression_reward` is the paper's r = c (2 - c) acc_s / acc_t with
c = 1 - params_s / params_t (Sec. 4); `CompressionEvaluator` (registered as
evaluator "compression") trains a student by distillation and reports it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from core.cost import count_macs, count_params
from core.engine.data import DataSplits
from core.engine.registry import EVALUATORS, SPACES, ConfigError
from core.evaluation.base import Evaluator
from core.evaluation.result import Result
from core.space import Arch, Choice, SearchSpace

LAYER_TYPES = ("Identity", "Flatten", "Concat", "Shuffle", "Conv2d", "MaxPool", "AvgPool", "ReLU", "BN", "Linear")
"""The official code's 10 layer types, in its one-hot order."""

REMOVE_PROBS = (0.3, 0.4, 0.5, 0.6, 0.7)      # official ar_p1
SKIP_PROBS = (0.003, 0.005, 0.01, 0.03, 0.05)  # official ar_p3

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Sigmoid, nn.Tanh, nn.ELU)


def layer_type(module: nn.Module) -> str:
    """The official type name of a leaf module (activations count as ReLU, dropout as Identity)."""
    if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout1d)):
        return "Identity"
    if isinstance(module, nn.Flatten):
        return "Flatten"
    if isinstance(module, nn.ChannelShuffle):
        return "Shuffle"
    if isinstance(module, nn.Conv2d):
        return "Conv2d"
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return "MaxPool"
    if isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return "AvgPool"
    if isinstance(module, _ACTIVATIONS):
        return "ReLU"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "BN"
    if isinstance(module, nn.Linear):
        return "Linear"
    raise ValueError(f"compression space: unsupported teacher layer {type(module).__name__}; supported: "
                     "Conv2d (groups 1 or depthwise), Linear, BatchNorm, pooling, activations, Flatten, Dropout")


def compression_reward(params_student: float, params_teacher: float, acc_student: float, acc_teacher: float) -> float:
    """ESNAC's reward r = c (2 - c) a, c = 1 - params_s / params_t, a = acc_s / acc_t (Cao et al., Sec. 4)."""
    c = 1.0 - params_student / params_teacher
    return c * (2.0 - c) * acc_student / acc_teacher


# ---------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------
def digits_cnn(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """A small VGG-style teacher for 8x8 digits: 3x[conv32] pool 2x[conv64] pool conv64, GAP, linear (~112k params)."""

    def cbr(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(*cbr(in_channels, 32), *cbr(32, 32), *cbr(32, 32), nn.MaxPool2d(2),
                         *cbr(32, 64), *cbr(64, 64), nn.MaxPool2d(2), *cbr(64, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


TEACHERS = {"digits_cnn": digits_cnn}
"""name -> builder(in_channels, num_classes) of the teachers a config can name."""


@dataclass
class Layer:
    """One node of the teacher's chain with its traced shapes (batch dimension left out)."""

    module: nn.Module
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def in_width(self) -> int:
        return self.in_shape[0]

    @property
    def out_width(self) -> int:
        return self.out_shape[0]


def _leaves(module: nn.Module) -> list[nn.Module]:
    children = list(module.children())
    if not children:
        return [module]
    return [leaf for child in children for leaf in _leaves(child)]


def trace_chain(teacher: nn.Module, input_shape: Sequence[int]) -> list[Layer]:
    """The teacher as a chain of leaf layers with shapes; raises ValueError when the chain is not the teacher."""
    was_training = teacher.training
    teacher.eval()
    x0 = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    layers: list[Layer] = []
    try:
        with torch.no_grad():
            x = x0
            for module in _leaves(teacher):
                if isinstance(module, nn.Linear) and x.dim() > 2:
                    flat = nn.Flatten()
                    y = flat(x)
                    layers.append(Layer(flat, "Flatten", tuple(x.shape[1:]), tuple(y.shape[1:])))
                    x = y
                kind = layer_type(module)
                if kind == "Conv2d" and module.groups not in (1, module.in_channels):
                    raise ValueError(f"compression space: grouped conv {module} is not supported "
                                     "(groups 1 or depthwise)")
                y = module(x)
                layers.append(Layer(module, kind, tuple(x.shape[1:]), tuple(y.shape[1:])))
                x = y
            expected = teacher(x0)
    finally:
        teacher.train(was_training)
    same = isinstance(expected, torch.Tensor) and expected.shape == x.shape and torch.allclose(expected, x, atol=1e-5)
    if not same:
        raise ValueError("compression space: the teacher's forward is not the chain of its leaf modules "
                         "(residual blocks and custom forwards are not supported; pass an nn.Sequential)")
    return layers


# ---------------------------------------------------------------------------------------------
# Students
# ---------------------------------------------------------------------------------------------
class CompressedNet(nn.Module):
    """Layer j reads the sum of the outputs of `sources[j]` (-1: the network input); returns the last layer's."""

    def __init__(self, layers: Sequence[nn.Module], sources: Sequence[Sequence[int]]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.sources = [list(s) for s in sources]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        for layer, sources in zip(self.layers, self.sources):
            inputs = [x if s < 0 else outs[s] for s in sources]
            h = inputs[0]
            for extra in inputs[1:]:
                h = h + extra
            outs.append(layer(h))
        return outs[-1]


@dataclass
class _Plan:
    removed: list[bool]
    sources: list[list[int]]
    in_idx: list[list[int]]
    out_idx: list[list[int]]


def _first(value: Any) -> int:
    value = value[0] if isinstance(value, tuple) else value
    return int(value) if value is not None else 0


@torch.no_grad()
def _slice(layer: Layer, in_idx: list[int], out_idx: list[int]) -> nn.Module:
    """A copy of the teacher layer keeping the channels/features `in_idx` -> `out_idx` (weights inherited)."""
    m = layer.module
    if layer.kind == "Conv2d":
        depthwise = m.groups > 1
        new = nn.Conv2d(len(in_idx), len(out_idx), m.kernel_size, m.stride, m.padding, m.dilation,
                        groups=len(out_idx) if depthwise else 1, bias=m.bias is not None, padding_mode=m.padding_mode)
        w = m.weight[out_idx]
        new.weight.copy_(w if depthwise else w[:, in_idx])
        if m.bias is not None:
            new.bias.copy_(m.bias[out_idx])
        return new
    if layer.kind == "Linear":
        new = nn.Linear(len(in_idx), len(out_idx), bias=m.bias is not None)
        new.weight.copy_(m.weight[out_idx][:, in_idx])
        if m.bias is not None:
            new.bias.copy_(m.bias[out_idx])
        return new
    if layer.kind == "BN":
        new = type(m)(len(in_idx), eps=m.eps, momentum=m.momentum, affine=m.affine,
                      track_running_stats=m.track_running_stats)
        if m.affine:
            new.weight.copy_(m.weight[in_idx])
            new.bias.copy_(m.bias[in_idx])
        if m.track_running_stats:
            new.running_mean.copy_(m.running_mean[in_idx])
            new.running_var.copy_(m.running_var[in_idx])
            new.num_batches_tracked.copy_(m.num_batches_tracked)
        return new
    return copy.deepcopy(m)


class CompressionSpace(SearchSpace):
    """ESNAC's compressions of one teacher (Cao et al., ICLR 2019, Sec. 3.2): remove, shrink, add skips."""

    def __init__(self, teacher: str | nn.Module = "digits_cnn", checkpoint: str | None = None, in_channels: int = 1,
                 num_classes: int = 10, input_size: int = 8, shrink_levels: int = 8,
                 remove_probs: list[float] | None = None, skip_probs: list[float] | None = None):
        if isinstance(teacher, str):
            if teacher not in TEACHERS:
                raise ConfigError(f"space.teacher: unknown teacher {teacher!r}; known: {', '.join(TEACHERS)}")
            self.teacher_name = teacher
            model = TEACHERS[teacher](in_channels=in_channels, num_classes=num_classes)
        elif isinstance(teacher, nn.Module):
            self.teacher_name = type(teacher).__name__
            model = teacher
        else:
            raise ConfigError(f"space.teacher: expected a teacher name or an nn.Module, got {teacher!r}")
        self.checkpoint = checkpoint
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise FileNotFoundError(f"space.checkpoint: file not found: {path}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        if isinstance(shrink_levels, bool) or not isinstance(shrink_levels, int) or shrink_levels < 1:
            raise ValueError(f"space.shrink_levels: expected an integer >= 1, got {shrink_levels!r}")
        self.teacher = model
        self.pretrained = checkpoint is not None
        self.in_channels, self.num_classes, self.input_size = in_channels, num_classes, input_size
        self.input_shape = (in_channels, input_size, input_size)
        self.shrink_levels = shrink_levels
        self.remove_probs = tuple(remove_probs or REMOVE_PROBS)
        self.skip_probs = tuple(skip_probs or SKIP_PROBS)
        for name, probs in (("remove_probs", self.remove_probs), ("skip_probs", self.skip_probs)):
            if any(not 0 <= p <= 1 for p in probs):
                raise ValueError(f"space.{name}: probabilities must be in [0, 1], got {list(probs)}")

        self.layers = trace_chain(model, self.input_shape)
        n = len(self.layers)
        self.removable = [i for i, layer in enumerate(self.layers) if layer.in_shape == layer.out_shape]
        producers = [i for i, layer in enumerate(self.layers) if layer.kind in ("Conv2d", "Linear")]
        if not producers:
            raise ValueError("compression space: the teacher has no Conv2d or Linear layer")
        self.logits_layer = producers[-1]
        fixed = {self.layers[self.logits_layer].out_width}
        self.groups = sorted({self.layers[i].out_width for i in producers[:-1]} - fixed)
        self.skips = [(i, j) for i in range(n) for j in range(i + 2, n)
                      if self.layers[i].out_shape == self.layers[j].in_shape]
        ratios = tuple(k / shrink_levels for k in range(shrink_levels))
        choices = [Choice(f"layer{i}.remove", (False, True)) for i in self.removable]
        choices += [Choice(f"width{w}.shrink", ratios) for w in self.groups]
        choices += [Choice(f"skip.{i}.{j}", (False, True)) for i, j in self.skips]
        super().__init__(choices)

    def config(self) -> dict[str, Any]:
        return {"teacher": self.teacher_name, "checkpoint": self.checkpoint, "in_channels": self.in_channels,
                "num_classes": self.num_classes, "input_size": self.input_size, "shrink_levels": self.shrink_levels}

    # -- rules ------------------------------------------------------------------------------------
    def active(self, arch: Mapping[str, Any]) -> list[str]:
        removed = {i for i in self.removable if arch[f"layer{i}.remove"]}
        return [c.name for c in self.choices
                if not (c.name.startswith("skip.") and int(c.name.split(".")[2]) in removed)]

    def size(self) -> int:
        """Distinct compressions: skips into a removed layer do not count (they are inactive)."""
        into: dict[int, int] = {}
        for _, j in self.skips:
            into[j] = into.get(j, 0) + 1
        total = self.shrink_levels ** len(self.groups)
        removable = set(self.removable)
        for j, k in into.items():
            if j not in removable:
                total *= 2 ** k
        for j in removable:
            total *= 1 + 2 ** into.get(j, 0)
        return total

    def teacher_arch(self) -> Arch:
        """The arch that keeps the teacher unchanged (no removal, no shrinking, no skip)."""
        return self.default()

    def sample(self, rng) -> Arch:
        """The official random compression: p1 ~ U(remove_probs), a ratio per group, p3 ~ U(skip_probs)."""
        p1 = rng.choice(self.remove_probs)
        values: dict[str, Any] = {}
        removed = set()
        for i in self.removable:
            values[f"layer{i}.remove"] = rng.random() < p1
            if values[f"layer{i}.remove"]:
                removed.add(i)
        for width in self.groups:
            values[f"width{width}.shrink"] = rng.choice(self.choice(f"width{width}.shrink").options)
        p3 = rng.choice(self.skip_probs)
        for i, j in self.skips:
            values[f"skip.{i}.{j}"] = j not in removed and rng.random() < p3
        return self.canonical(Arch(values))

    # -- the student's structure -----------------------------------------------------------------
    def widths(self, arch: Mapping[str, Any]) -> dict[int, int]:
        """Teacher width F -> student width for every shrinkable channel group."""
        return {w: max(1, int((1.0 - arch[f"width{w}.shrink"]) * w)) for w in self.groups}

    def _plan(self, arch: Mapping[str, Any]) -> _Plan:
        arch = self.check(arch)
        n = len(self.layers)
        removed = [False] * n
        for i in self.removable:
            removed[i] = bool(arch[f"layer{i}.remove"])
        sources = [[j - 1] for j in range(n)]
        for i, j in self.skips:
            if arch[f"skip.{i}.{j}"]:
                sources[j].append(i)
        widths = self.widths(arch)
        in_idx: list[list[int]] = []
        out_idx: list[list[int]] = []
        for j, layer in enumerate(self.layers):
            first = sources[j][0]
            idx = list(range(self.in_channels)) if first < 0 else out_idx[first]
            for s in sources[j][1:]:
                if out_idx[s] != idx:
                    raise AssertionError(f"skip {s}->{j} joins tensors of different widths")
            in_idx.append(idx)
            if removed[j]:
                out = idx
            elif layer.kind in ("Conv2d", "Linear"):
                w = layer.out_width
                out = list(range(widths[w] if j != self.logits_layer and w in widths else w))
            elif layer.kind == "Flatten" and len(layer.in_shape) > 1:
                hw = math.prod(layer.in_shape[1:])
                out = [c * hw + s for c in idx for s in range(hw)]
            else:
                out = idx
            out_idx.append(out)
        return _Plan(removed, sources, in_idx, out_idx)

    def build(self, arch: Mapping[str, Any], num_classes: int | None = None, channel_divisor: float = 1,
              **overrides: Any) -> CompressedNet:
        """The student: the teacher's chain with `arch`'s removals, shrunk widths and skips; weights inherited."""
        if num_classes not in (None, self.num_classes):
            raise ValueError(f"build: the teacher predicts {self.num_classes} classes, not {num_classes}")
        if channel_divisor != 1 or overrides:
            raise ValueError("build: the compression space takes no channel_divisor or other overrides")
        plan = self._plan(arch)
        modules = [nn.Identity() if plan.removed[j] else _slice(layer, plan.in_idx[j], plan.out_idx[j])
                   for j, layer in enumerate(self.layers)]
        return CompressedNet(modules, plan.sources)

    def layer_descriptors(self, arch: Mapping[str, Any]) -> list[list[float]]:
        """ESNAC's per-layer rows: type one-hot (10), [k, s, p, groups, in, out], in- and out-link offsets."""
        plan = self._plan(arch)
        n = len(self.layers)
        consumers: list[list[int]] = [[] for _ in range(n)]
        for j, sources in enumerate(plan.sources):
            for s in sources:
                if s >= 0:
                    consumers[s].append(j)
        rows = []
        for j, layer in enumerate(self.layers):
            kind = "Identity" if plan.removed[j] else layer.kind
            m = layer.module
            base = [0.0] * len(LAYER_TYPES)
            base[LAYER_TYPES.index(kind)] = 1.0
            if plan.removed[j]:
                params = [0, 0, 0, 0]
            else:
                params = [_first(getattr(m, "kernel_size", 0)), _first(getattr(m, "stride", 0)),
                          _first(getattr(m, "padding", 0)) if not isinstance(getattr(m, "padding", 0), str) else 0,
                          int(getattr(m, "groups", 0))]
                if kind == "Conv2d" and m.groups > 1:
                    params[3] = len(plan.out_idx[j])
            in_w = len(plan.in_idx[j]) if len(layer.in_shape) else 0
            out_w = len(plan.out_idx[j])
            links_in = [0.0] * n
            links_out = [0.0] * n
            for s in plan.sources[j]:
                if s >= 0:
                    links_in[j - s] = 1.0
            for c in consumers[j]:
                links_out[c - j] = 1.0
            rows.append(base + [float(v) for v in params] + [float(in_w), float(out_w)] + links_in + links_out)
        return rows


SPACES.register("compression", CompressionSpace)


# ---------------------------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


@EVALUATORS.register("compression")
class CompressionEvaluator(Evaluator):
    """Train a compressed student by distillation and score it with ESNAC's reward.

    The student inherits the teacher's weights and trains for `epochs` with
    Adam (lr 1e-3, weight decay 5e-4) on the MSE between its logits and the
    teacher's (the official search-time recipe: 10 epochs, `tr_se_*`). Metrics:
    `reward` = c (2 - c) acc_s / acc_t, `accuracy` (validation), `compression`
    c = 1 - params_s / params_t, `params`, `macs`, `teacher_accuracy`. A
    teacher without a checkpoint is first trained with cross-entropy for
    `teacher_epochs` (Adam, `teacher_lr`), once per evaluator, seeded.
    """

    def __init__(self, space: SearchSpace, data: DataSplits, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
                 weight_decay: float = 5e-4, teacher_epochs: int = 30, teacher_lr: float = 1e-3,
                 sample_ratio: float = 1.0, seed: int = 0, threads: int | None = 1):
        if not isinstance(space, CompressionSpace):
            raise ConfigError(f"evaluator.name: 'compression' needs space.name 'compression', "
                              f"got {type(space).__name__}")
        if not 0 < sample_ratio <= 1:
            raise ConfigError(f"evaluator.sample_ratio must be in (0, 1], got {sample_ratio}")
        if epochs < 0 or teacher_epochs < 0:
            raise ConfigError("evaluator.epochs and evaluator.teacher_epochs must be >= 0")
        self.space, self.data = space, data
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.teacher_epochs, self.teacher_lr = teacher_epochs, teacher_lr
        self.sample_ratio, self.seed, self.threads = sample_ratio, seed, threads
        self._train = data.train
        if sample_ratio < 1:
            g = torch.Generator().manual_seed(seed)
            n = max(1, int(round(len(data.train) * sample_ratio)))
            self._train = Subset(data.train, torch.randperm(len(data.train), generator=g)[:n].tolist())
        self._teacher_acc: float | None = None

    def config(self) -> dict[str, Any]:
        return {"type": "compression", "space": self.space.config(), "data": self.data.name, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "weight_decay": self.weight_decay,
                "teacher_epochs": 0 if self.space.pretrained else self.teacher_epochs, "teacher_lr": self.teacher_lr,
                "sample_ratio": self.sample_ratio, "seed": self.seed}

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size if shuffle else 256, shuffle=shuffle, generator=g)

    def prepare(self) -> None:
        """Train and score the teacher once, before parallel executors copy this evaluator to their workers."""
        self.teacher_accuracy()

    def teacher_accuracy(self) -> float:
        """Validation accuracy of the teacher (trained here first when the space has no checkpoint)."""
        if self._teacher_acc is None:
            teacher = self.space.teacher
            if not self.space.pretrained and self.teacher_epochs and not getattr(self.space, "teacher_trained", False):
                torch.manual_seed(self.seed)
                opt = torch.optim.Adam(teacher.parameters(), lr=self.teacher_lr)
                teacher.train()
                for _ in range(self.teacher_epochs):
                    for x, y in self._loader(self._train, True):
                        loss = F.cross_entropy(teacher(x), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                self.space.teacher_trained = True
            self._teacher_acc = _accuracy(teacher, self._loader(self.data.val, False))
            if self._teacher_acc <= 0:
                raise RuntimeError("the teacher's validation accuracy is 0; the reward a = acc_s / acc_t is undefined")
        return self._teacher_acc

    def evaluate(self, arch: Arch) -> Result:
        start = time.perf_counter()
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            acc_t = self.teacher_accuracy()
            teacher = self.space.teacher.eval()
            student = self.space.build(arch)
            params_s, params_t = count_params(student), count_params(teacher)
            macs = count_macs(student, torch.zeros(1, *self.space.input_shape))
            torch.manual_seed(self.seed)
            opt = torch.optim.Adam(student.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            for epoch in range(self.epochs):
                student.train()
                for step, (x, _) in enumerate(self._loader(self._train, True)):
                    with torch.no_grad():
                        target = teacher(x)
                    loss = F.mse_loss(student(x), target)
                    if not math.isfinite(loss.item()):
                        return Result.failed(f"distillation loss is {loss.item()} at epoch {epoch} step {step}",
                                             time.perf_counter() - start, params=float(params_s), macs=float(macs))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            acc_s = _accuracy(student, self._loader(self.data.val, False))
        finally:
            torch.set_num_threads(previous)
        c = 1.0 - params_s / params_t
        metrics = {"reward": compression_reward(params_s, params_t, acc_s, acc_t), "accuracy": acc_s,
                   "compression": c, "params": float(params_s), "macs": float(macs), "teacher_accuracy": acc_t}
        return Result(metrics=metrics, cost=time.perf_counter() - start)


__all__ = ["LAYER_TYPES", "TEACHERS", "digits_cnn", "layer_type", "trace_chain", "compression_reward",
           "CompressedNet", "CompressionSpace", "CompressionEvaluator"]
