"""Epitome convolutions: weights sampled from a compact epitome (Neural Epitome Search, and WSNet's fixed sampling).

Zhou, Jin, Hou, Wang, Yang, Feng. "Neural Epitome Search for
Architecture-Agnostic Network Compression", ICLR 2020 (arXiv 1907.05642),
Sec. 3; the released code is `zhoudaquan/NES` (`timm/models/NESConv_utils.py`).
WSNet: Jin, Yang, Xiao, Yan, Feng. "WSNet: Compact and Efficient Networks
Through Weight Sampling", ICML 2018.

An `EpitomeConv2d` with C channels along its sampled dimension (`dim="out"`:
output channels, for expand 1x1 convs; `dim="in"`: input channels, for
project 1x1 convs) holds an epitome E with n = ceil(C / multiplier) channels
there, so the weight tensor is `multiplier` times smaller (the compression
ratio), and builds its full weight from r = ceil(C / n) copies of E, cropped to
C. Copy i starts at a position s_i of E's channel axis and wraps around it
(NES's channel wrapping): its channel c is E at s_i + c (mod n), with linear
interpolation between the two neighbouring positions when s_i is fractional,
(1 - f) E[k + c] + f E[k + c + 1] for s_i = k + f. The three samplings:

- `tile`: s_i = 0 for every copy, the weight is E repeated. This is what the
  released NES models run (`NESConv2d(..., use_coeff=False)`: `weight.repeat`
  along output channels for expand convs, along input channels for project
  convs);
- `fixed`: s_i = i * stride with a fixed integer stride, WSNet's hand-set
  sampling stride along the channel axis;
- `learned`: s_i = c_i * index_range, where c comes from NES's learner
  branch (the released code's layers: 3x3 stride-2 conv, BN, ReLU6, 1x1
  conv to r channels, global average pooling, mean over the batch, L2
  normalisation; the 3x3 conv made depthwise and the BN after the 1x1 conv
  left out, see below). During training the indices come from the current batch
  and a running mean of them (momentum 0.1) is kept as the routing map;
  evaluation uses the routing map, so the learner is training-only and is
  not counted in the inference parameters (`inference_parameters`).
  `index_range` defaults to 1, the released code's reach: its copy i is
  `c_i * E + (1 - c_i) * roll(E, 1)` (`generate_share_weight`), the epitome
  interpolated with itself shifted by one channel, so a start moves within
  neighbouring channels. A larger range lets a copy start anywhere on the cyclic axis (n for the whole axis), but then
  the starts, computed from each training batch, move by many channels
  between steps and every move reassigns what the sampled channels mean: at
  n the network stays at chance (`docs/operators.md`).

Because every copy is a (fractionally) shifted E and a convolution is
linear in its weight, all three are computed at the epitome's cost: for
`dim="out"` the compact convolution's output is shifted and interpolated
per copy; for `dim="in"` the input's channel groups are shifted,
interpolated and summed, then convolved with E. With `tile` and
multiplier 2 this is the released code's trick (repeating along input
channels = summing the input halves), and it halves the layer's
multiply-adds. MACs counted by `torch.utils.flop_counter` reflect this.

Deviations in the learner (read in the code): the released learner's 3x3
conv is dense, C_in x C_in x 9 weights, which for the project conv of a
block expanded to 576 channels is 3M parameters, more than the whole
network it samples for; ours is depthwise (the branch is training-only
either way). The released learner ends with a BatchNorm after the 1x1 conv. In training mode the batch mean of
that BN's pooled output is exactly its shift (zero at initialisation), so
the coefficients would not depend on the input, and L2-normalising a
vector that is zero up to rounding gives random directions with gradients
of order 1/eps. We leave that BN out. The released learner path also
cannot run as written (it indexes past its coefficient vector); ours
follows its other layers and the paper's interpolation. The learner's 3x3
conv has no padding, as in the code (maps smaller than 3 are padded by 1).
The learner reads a detached copy of the layer's input: it is trained
through the interpolation weights only. Letting its gradient flow back
into the network adds, at every epitome layer, a term scaled by
`index_range`; over a MobileNetV2 these compound: at initialisation the
first epitome's weight gradient was 5.6e5 (4e-2 with the input detached),
so the first SGD step wrecked the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import OPS, ConfigError

__all__ = ["EpitomeConv2d", "shift_channels", "make_epitome_conv", "inference_parameters"]

SAMPLINGS = ("tile", "fixed", "learned")


def shift_channels(t: torch.Tensor, start: torch.Tensor | float) -> torch.Tensor:
    """Channel c of the result is t at channel start + c (mod C) of dim 1, linearly interpolated."""
    n = t.shape[1]
    start = torch.as_tensor(start, dtype=t.dtype, device=t.device)
    k = torch.floor(start)
    f = start - k
    k = int(k.item()) % n
    lo = torch.roll(t, -k, dims=1)
    hi = torch.roll(t, -((k + 1) % n), dims=1)
    return (1 - f) * lo + f * hi


class EpitomeConv2d(nn.Module):
    """A convolution whose weight is r shifted copies of a compact epitome (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 padding: int | None = None, dim: str = "out", multiplier: float = 2.0, sampling: str = "tile",
                 stride_channels: int = 1, index_range: float = 1.0, bias: bool = False):
        super().__init__()
        if dim not in ("out", "in"):
            raise ConfigError(f"dim: expected 'out' (expand convs) or 'in' (project convs), got {dim!r}")
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling: expected one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if not isinstance(multiplier, (int, float)) or multiplier < 1:
            raise ConfigError(f"multiplier: expected a compression ratio >= 1, got {multiplier!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.dim, self.multiplier, self.sampling = dim, float(multiplier), sampling
        full = out_channels if dim == "out" else in_channels
        self.compact = math.ceil(full / multiplier)
        self.copies = math.ceil(full / self.compact)
        shape = (self.compact, in_channels) if dim == "out" else (out_channels, self.compact)
        self.weight = nn.Parameter(torch.empty(*shape, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        if isinstance(index_range, bool) or not isinstance(index_range, (int, float)) or index_range <= 0:
            raise ConfigError(f"index_range: expected a positive number of channels, got {index_range!r}")
        self.stride_channels = int(stride_channels)
        self.index_range = float(index_range)
        self.register_buffer("routing", torch.zeros(self.copies))
        if sampling == "fixed":
            self.routing.copy_(torch.arange(self.copies, dtype=torch.float32) * self.stride_channels)
        self.learner = self._learner(in_channels) if sampling == "learned" else None

    def _learner(self, channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 0, groups=channels, bias=False),
                             nn.BatchNorm2d(channels),
                             nn.ReLU6(inplace=True), nn.Conv2d(channels, self.copies, 1, bias=False))

    def starts(self, x: torch.Tensor) -> torch.Tensor:
        """The start index of every copy for this forward (training: from the learner; else the routing map)."""
        if self.sampling != "learned":
            return self.routing
        if not self.training:
            return self.routing
        h = x.detach()  # the learner trains itself; its gradient stays out of the network it samples for
        h = h if min(h.shape[2:]) >= 3 else F.pad(h, (1, 1, 1, 1))
        coeff = F.normalize(self.learner(h).mean((2, 3)).mean(0), dim=0)
        starts = coeff * self.index_range
        with torch.no_grad():
            self.routing.mul_(0.9).add_(0.1 * starts.detach())
        return starts

    def full_weight(self, starts: torch.Tensor | None = None) -> torch.Tensor:
        """The weight an ordinary convolution would use (for tests and export)."""
        starts = self.routing if starts is None else starts
        d = 0 if self.dim == "out" else 1
        e = self.weight if d == 1 else self.weight.transpose(0, 1)
        copies = [shift_channels(e, starts[i]) for i in range(self.copies)]
        w = torch.cat(copies, 1)[:, :self.out_channels if d == 0 else self.in_channels]
        return w if d == 1 else w.transpose(0, 1)

    def _routes(self, starts: torch.Tensor, total: int):
        """For channel j of the full axis (copy i = j // n, position c = j % n): the epitome channels
        (k_i + c) mod n and (k_i + c + 1) mod n it interpolates between, and the weight f_i of the second."""
        n = self.compact
        k = torch.floor(starts)
        f = (starts - k)[:, None].expand(-1, n).reshape(-1)[:total]
        lo = (k.long()[:, None] + torch.arange(n, device=starts.device)) % n
        lo = lo.reshape(-1)[:total]
        return lo, (lo + 1) % n, f.view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        starts = self.starts(x)
        if self.dim == "out":  # copy i of the output is the compact output shifted by s_i
            y = F.conv2d(x, self.weight, None, self.stride, self.padding)
            lo, hi, f = self._routes(starts, self.out_channels)
            y = y.index_select(1, lo) if not f.any() else \
                (1 - f) * y.index_select(1, lo) + f * y.index_select(1, hi)
        else:  # input channel c of copy i adds into epitome channels k_i + c (weight 1 - f_i) and k_i + c + 1 (f_i)
            lo, hi, f = self._routes(starts, self.in_channels)
            shape = (x.shape[0], self.compact, *x.shape[2:])
            folded = x.new_zeros(shape).index_add(1, lo, x * (1 - f))
            if f.any():
                folded = folded.index_add(1, hi, x * f)
            y = F.conv2d(folded, self.weight, None, self.stride, self.padding)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dim={self.dim}, "
                f"multiplier={self.multiplier:g}, sampling={self.sampling}, epitome={tuple(self.weight.shape)}")


def inference_parameters(model: nn.Module) -> int:
    """Parameters the trained network needs at inference: every parameter except the NES learner branches."""
    learner = {id(p) for m in model.modules() if isinstance(m, EpitomeConv2d) and m.learner is not None
               for p in m.learner.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in learner)


@OPS.register("epitome_conv")
def make_epitome_conv(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, dim: str = "out",
                      multiplier: float = 2.0, sampling: str = "tile", stride_channels: int = 1,
                      index_range: float = 1.0) -> EpitomeConv2d:
    """An epitome conv; the mobile space passes `dim` ("out" for expand, "in" for project convs)."""
    return EpitomeConv2d(in_channels, out_channels, kernel_size, stride, dim=dim, multiplier=multiplier,
                         sampling=sampling, stride_channels=stride_channels, index_range=index_range)
