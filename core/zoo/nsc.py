"""BlockQNN's Network Structure Code (NSC) space: one block of layers, stacked into a network.

Zhong, Yan, Wu, Shao, Liu. "Practical Block-wise Neural Network Architecture
Generation", CVPR 2018 (arXiv 1708.05552), Sec. 3.1 and Table 1. No official
code was released.

A block is a short DAG of layers. Layer l (1 <= l <= max_layers) is a code
(index, type, kernel, pred1, pred2); node 0 is the block input. Types:

    conv        pre-activation ReLU-Conv(kernel)-BN, kernel in `conv_kernels` (1, 3, 5), C outputs
    max_pool    max pooling, stride 1, kernel in `pool_kernels` (1, 3)
    avg_pool    average pooling, stride 1, kernel in `pool_kernels`
    identity    the predecessor unchanged
    add         element-wise sum of pred1 and pred2
    concat      channel concatenation of pred1 and pred2
    terminal    the block ends here

Rules: predecessors precede the layer (pred < index); one-input types read
pred1, `add`/`concat` read two different layers (stored as pred1 < pred2, so
each block has one code); the first layer is not `terminal`; a `terminal` ends
the block and the layers after it are inactive (reset by `canonical`). A block
that reaches `max_layers` without a terminal ends there. The block output
concatenates every layer whose output no other layer reads (the "unused
outputs"), projected back to C channels by a 1x1 ReLU-Conv-BN when needed.

An `Arch` names, per layer l:

    layer{l}.type    one of NSC_TYPES
    layer{l}.kernel  1 | 3 | 5     (conv and pools only)
    layer{l}.pred1   0 .. l-1      (every type but terminal)
    layer{l}.pred2   0 .. l-1      (add and concat only)

Network (the paper's CIFAR layout, Fig. 4, scaled for 8x8 digits): stem
conv3x3 + BN; per stage s, `blocks_per_stage` (N) blocks at `stage_channels[s]`
channels; between stages a 2x2 max pool (stride 2) followed by a 1x1
ReLU-Conv-BN when the width changes; then ReLU, global average pooling and a
linear classifier. Defaults: three stages of 16/32/64 channels, N=2.

Deviations and choices (the paper gives no code): widths are made to agree by
1x1 projections (an `add` of two inputs of different width projects the ones
that are not C wide to C; a `concat` keeps the sum of widths; the block output
is projected to C), average pooling excludes padding, and the stage
transition is max pool + 1x1 conv. `density(arch)` is edges / nodes of the
block DAG (input and layers are nodes, predecessor links are edges), the
quantity BlockQNN's early-stop reward penalises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.engine.registry import SPACES
from core.api import Arch, Choice, SearchSpace

NSC_TYPES = ("conv", "max_pool", "avg_pool", "identity", "add", "concat", "terminal")
"""The seven NSC layer types of BlockQNN's Table 1, in the paper's order (type ids 1..7)."""

ONE_INPUT = ("conv", "max_pool", "avg_pool", "identity")
TWO_INPUT = ("add", "concat")

Code = tuple  # (type, kernel, pred1, pred2); kernel/pred2/pred1 are 0 where a type has none


def _int_list(name: str, values: Sequence[int], allowed: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not values:
        raise ValueError(f"{name}: expected a non-empty list of odd kernel sizes from {list(allowed)}, got {values!r}")
    out = tuple(int(v) for v in values)
    bad = [v for v in out if v not in allowed]
    if bad or len(set(out)) != len(out):
        raise ValueError(f"{name}: expected distinct kernel sizes from {list(allowed)}, got {list(values)}")
    return tuple(sorted(out))


class ReLUConvBN(nn.Sequential):
    """Pre-activation ReLU -> Conv -> BN, the conv unit of BlockQNN (Sec. 3.1)."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__(nn.ReLU(inplace=False), nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class _Add(nn.Module):
    def __init__(self, widths: tuple[int, int], C: int):
        super().__init__()
        same = widths[0] == widths[1]
        self.proj = nn.ModuleList(nn.Identity() if same or w == C else ReLUConvBN(w, C, 1) for w in widths)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.proj[0](a) + self.proj[1](b)


class _Concat(nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


class NSCBlock(nn.Module):
    """One block built from its NSC codes (terminal excluded); input and output have C channels."""

    def __init__(self, codes: Sequence[Code], C: int):
        super().__init__()
        self.codes = [tuple(c) for c in codes if c[0] != "terminal"]
        widths = [C]
        ops = []
        for kind, kernel, p1, p2 in self.codes:
            if kind == "conv":
                ops.append(ReLUConvBN(widths[p1], C, kernel))
                widths.append(C)
            elif kind == "max_pool":
                ops.append(nn.MaxPool2d(kernel, stride=1, padding=kernel // 2))
                widths.append(widths[p1])
            elif kind == "avg_pool":
                ops.append(nn.AvgPool2d(kernel, stride=1, padding=kernel // 2, count_include_pad=False))
                widths.append(widths[p1])
            elif kind == "identity":
                ops.append(nn.Identity())
                widths.append(widths[p1])
            elif kind == "add":
                op = _Add((widths[p1], widths[p2]), C)
                ops.append(op)
                widths.append(widths[p1] if widths[p1] == widths[p2] else C)
            elif kind == "concat":
                ops.append(_Concat())
                widths.append(widths[p1] + widths[p2])
            else:
                raise ValueError(f"unknown NSC type {kind!r}; known: {NSC_TYPES}")
        self.ops = nn.ModuleList(ops)
        used = {c[2] for c in self.codes} | {c[3] for c in self.codes if c[0] in TWO_INPUT}
        self.outputs = [i for i in range(1, len(self.codes) + 1) if i not in used]
        width = sum(widths[i] for i in self.outputs)
        self.project = nn.Identity() if width == C else ReLUConvBN(width, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for (kind, _, p1, p2), op in zip(self.codes, self.ops):
            nodes.append(op(nodes[p1], nodes[p2]) if kind in TWO_INPUT else op(nodes[p1]))
        out = nodes[self.outputs[0]] if len(self.outputs) == 1 else torch.cat([nodes[i] for i in self.outputs], 1)
        return self.project(out)


class NSCNetwork(nn.Module):
    """stem -> [N blocks -> reduction] per stage -> ReLU -> global average pool -> linear (BlockQNN Fig. 4)."""

    def __init__(self, codes: Sequence[Code], stage_channels: Sequence[int], blocks_per_stage: int,
                 in_channels: int, num_classes: int):
        super().__init__()
        c0 = stage_channels[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c0, 3, padding=1, bias=False), nn.BatchNorm2d(c0))
        stages = []
        prev = c0
        for s, c in enumerate(stage_channels):
            layers: list[nn.Module] = []
            if s > 0:
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                if c != prev:
                    layers.append(ReLUConvBN(prev, c, 1))
            layers += [NSCBlock(codes, c) for _ in range(blocks_per_stage)]
            stages.append(nn.Sequential(*layers))
            prev = c
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.stages(self.stem(x))))


class NSCSpace(SearchSpace):
    """BlockQNN's NSC block space (Zhong et al., CVPR 2018, Sec. 3.1): up to `max_layers` codes per block.

    Besides the SearchSpace API it offers the grammar the BlockQNN agent walks
    (`layer_actions`, `codes`, `from_codes`), `density` for the early-stop
    reward and `layer_descriptors` (one token per layer) for sequence models
    such as ESNAC's LSTM kernel.
    """

    def __init__(self, max_layers: int = 8, conv_kernels: list[int] | None = None,
                 pool_kernels: list[int] | None = None, stage_channels: list[int] | None = None,
                 blocks_per_stage: int = 2, in_channels: int = 1, num_classes: int = 10):
        if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
            raise ValueError(f"space.max_layers: expected an integer >= 1, got {max_layers!r}")
        if isinstance(blocks_per_stage, bool) or not isinstance(blocks_per_stage, int) or blocks_per_stage < 1:
            raise ValueError(f"space.blocks_per_stage: expected an integer >= 1, got {blocks_per_stage!r}")
        self.max_layers = max_layers
        self.conv_kernels = _int_list("space.conv_kernels", conv_kernels or [1, 3, 5], (1, 3, 5, 7))
        self.pool_kernels = _int_list("space.pool_kernels", pool_kernels or [1, 3], (1, 3, 5, 7))
        channels = list(stage_channels or [16, 32, 64])
        if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels):
            raise ValueError(f"space.stage_channels: expected a non-empty list of positive integers, got {channels!r}")
        self.stage_channels = tuple(channels)
        self.blocks_per_stage = blocks_per_stage
        self.in_channels, self.num_classes = in_channels, num_classes
        kernels = tuple(sorted(set(self.conv_kernels) | set(self.pool_kernels)))
        choices = []
        for l in range(1, max_layers + 1):
            choices += [Choice(f"layer{l}.type", NSC_TYPES, default="conv"),
                        Choice(f"layer{l}.kernel", kernels, default=kernels[len(kernels) // 2]),
                        Choice(f"layer{l}.pred1", tuple(range(l)), default=l - 1),
                        Choice(f"layer{l}.pred2", tuple(range(l)), default=l - 1)]
        super().__init__(choices)
        self._actions = {l: self._enumerate_actions(l) for l in range(1, max_layers + 1)}

    def config(self) -> dict[str, Any]:
        return {"max_layers": self.max_layers, "conv_kernels": list(self.conv_kernels),
                "pool_kernels": list(self.pool_kernels), "stage_channels": list(self.stage_channels),
                "blocks_per_stage": self.blocks_per_stage, "in_channels": self.in_channels,
                "num_classes": self.num_classes}

    # -- the grammar -------------------------------------------------------------------
    def _enumerate_actions(self, l: int) -> list[Code]:
        acts: list[Code] = []
        for kind in NSC_TYPES:
            if kind == "conv":
                acts += [(kind, k, p, 0) for k in self.conv_kernels for p in range(l)]
            elif kind in ("max_pool", "avg_pool"):
                acts += [(kind, k, p, 0) for k in self.pool_kernels for p in range(l)]
            elif kind == "identity":
                acts += [(kind, 0, p, 0) for p in range(l)]
            elif kind in TWO_INPUT:
                acts += [(kind, 0, p, q) for p in range(l) for q in range(p + 1, l)]
            elif l > 1:  # terminal; a block has at least one layer
                acts.append(("terminal", 0, 0, 0))
        return acts

    def layer_actions(self, l: int) -> list[Code]:
        """Every valid NSC (type, kernel, pred1, pred2) for layer l (1-based), terminal included when l > 1."""
        if not 1 <= l <= self.max_layers:
            raise ValueError(f"layer index {l} is outside 1..{self.max_layers}")
        return list(self._actions[l])

    def codes(self, arch: Mapping[str, Any]) -> list[Code]:
        """The block's codes in order, up to and including a terminal; inactive fields are 0."""
        out: list[Code] = []
        for l in range(1, self.max_layers + 1):
            kind = arch[f"layer{l}.type"]
            if kind == "terminal":
                out.append(("terminal", 0, 0, 0))
                break
            kernel = arch[f"layer{l}.kernel"] if kind in ("conv", "max_pool", "avg_pool") else 0
            p2 = arch[f"layer{l}.pred2"] if kind in TWO_INPUT else 0
            out.append((kind, kernel, arch[f"layer{l}.pred1"], p2))
        return out

    def from_codes(self, codes: Sequence[Code]) -> Arch:
        """The canonical Arch of a code sequence (a trailing terminal is optional at max_layers)."""
        values = {c.name: c.default for c in self.choices}
        for l, (kind, kernel, p1, p2) in enumerate(codes, start=1):
            if l > self.max_layers:
                raise ValueError(f"{len(codes)} codes for a block of at most {self.max_layers} layers")
            values[f"layer{l}.type"] = kind
            if kind in ("conv", "max_pool", "avg_pool"):
                values[f"layer{l}.kernel"] = kernel
            if kind != "terminal":
                values[f"layer{l}.pred1"] = p1
            if kind in TWO_INPUT:
                values[f"layer{l}.pred2"] = p2
            if kind == "terminal":
                break
        return self.check(Arch(values))

    # -- SearchSpace rules -------------------------------------------------------------------
    def active(self, arch: Mapping[str, Any]) -> list[str]:
        names = []
        for l in range(1, self.max_layers + 1):
            kind = arch[f"layer{l}.type"]
            names.append(f"layer{l}.type")
            if kind == "terminal":
                break
            if kind in ("conv", "max_pool", "avg_pool"):
                names.append(f"layer{l}.kernel")
            names.append(f"layer{l}.pred1")
            if kind in TWO_INPUT:
                names.append(f"layer{l}.pred2")
        return names

    def constraint_error(self, arch: Arch) -> str | None:
        if arch["layer1.type"] == "terminal":
            return "layer1.type: a block needs at least one layer before the terminal"
        for l in range(1, self.max_layers + 1):
            kind = arch[f"layer{l}.type"]
            if kind == "terminal":
                return None
            kernel = arch[f"layer{l}.kernel"]
            if kind == "conv" and kernel not in self.conv_kernels:
                return f"layer{l}.kernel = {kernel}: a conv takes kernels {list(self.conv_kernels)}"
            if kind in ("max_pool", "avg_pool") and kernel not in self.pool_kernels:
                return f"layer{l}.kernel = {kernel}: a pool takes kernels {list(self.pool_kernels)}"
            if kind in TWO_INPUT and not arch[f"layer{l}.pred1"] < arch[f"layer{l}.pred2"]:
                return (f"layer{l}: {kind} reads two different layers, stored as pred1 < pred2 "
                        f"(got {arch[f'layer{l}.pred1']}, {arch[f'layer{l}.pred2']})")
        return None

    def size(self) -> int:
        """Number of distinct blocks: sum over lengths L of the product of the valid codes per layer."""
        total, prod = 0, 1
        for l in range(1, self.max_layers + 1):
            prod *= sum(1 for a in self._actions[l] if a[0] != "terminal")
            total += prod
        return total

    def sample(self, rng) -> Arch:
        """Layer by layer: a type uniformly among those valid here, then its kernel and predecessors uniformly."""
        codes: list[Code] = []
        for l in range(1, self.max_layers + 1):
            kinds = [k for k in NSC_TYPES if (k != "terminal" or l > 1) and (k not in TWO_INPUT or l > 1)]
            kind = rng.choice(kinds)
            if kind == "terminal":
                codes.append(("terminal", 0, 0, 0))
                break
            if kind in TWO_INPUT:
                p1, p2 = sorted(rng.sample(range(l), 2))
                codes.append((kind, 0, p1, p2))
                continue
            kernels = self.conv_kernels if kind == "conv" else self.pool_kernels if kind != "identity" else (0,)
            codes.append((kind, rng.choice(kernels), rng.randrange(l), 0))
        return self.from_codes(codes)

    # -- descriptors ---------------------------------------------------------------------------
    def density(self, arch: Mapping[str, Any]) -> float:
        """Edges / nodes of the block DAG (input + layers as nodes, predecessor links as edges)."""
        layers = [c for c in self.codes(arch) if c[0] != "terminal"]
        edges = sum(2 if c[0] in TWO_INPUT else 1 for c in layers)
        return edges / (len(layers) + 1)

    def layer_descriptors(self, arch: Mapping[str, Any]) -> list[list[float]]:
        """One token per block layer: type one-hot (7), kernel, one-hot offsets l - pred1 and l - pred2."""
        out = []
        for l, (kind, kernel, p1, p2) in enumerate(self.codes(arch), start=1):
            token = [0.0] * (len(NSC_TYPES) + 1 + 2 * self.max_layers)
            token[NSC_TYPES.index(kind)] = 1.0
            token[len(NSC_TYPES)] = float(kernel)
            if kind != "terminal":
                token[len(NSC_TYPES) + l - p1] = 1.0
            if kind in TWO_INPUT:
                token[len(NSC_TYPES) + self.max_layers + l - p2] = 1.0
            out.append(token)
        return out

    # -- networks --------------------------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], channel_divisor: float = 1, num_classes: int | None = None,
              **overrides: Any) -> NSCNetwork:
        """The network stacking `arch`'s block N times per stage; `channel_divisor` divides every width (EcoNAS)."""
        arch = self.check(arch)
        if channel_divisor <= 0:
            raise ValueError(f"channel_divisor: expected a positive number, got {channel_divisor!r}")
        settings = {"stage_channels": [max(1, int(round(c / channel_divisor))) for c in self.stage_channels],
                    "blocks_per_stage": self.blocks_per_stage, "in_channels": self.in_channels,
                    "num_classes": num_classes or self.num_classes}
        unknown = set(overrides) - set(settings)
        if unknown:
            raise ValueError(f"build: unknown overrides {sorted(unknown)}; known: {sorted(settings)}")
        settings.update(overrides)
        return NSCNetwork(self.codes(arch), **settings)


def block_string(codes: Sequence[Code]) -> str:
    """BlockQNN's textual form, one 'index_type_kernel_pred1_pred2' per layer (type ids 1..7 as in Table 1)."""
    return " ".join(f"{l}_{NSC_TYPES.index(k) + 1}_{kernel}_{p1}_{p2}"
                    for l, (k, kernel, p1, p2) in enumerate(codes, start=1))


SPACES.register("nsc", NSCSpace)

__all__ = ["NSC_TYPES", "NSCSpace", "NSCBlock", "NSCNetwork", "ReLUConvBN", "block_string"]
