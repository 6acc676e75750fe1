"""Dynamic grouping convolution (DGConv) and its fixed-grouping counterpart (FGConv).

Zhang, Li, Shao, Peng, Zhang, Wang, Luo. "Differentiable Learning-to-Group
Channels via Groupable Convolutional Neural Networks", ICCV 2019
(arXiv 1908.05867), Sec. 3; as used for multi-source remote sensing by Yang,
Zhu, Qu, Wang, Ren, Cheng, "Single-Stream CNN With Learnable Architecture for
Multisource Remote Sensing Data", IEEE TGRS 60, 2022 (arXiv 2109.06094), whose
code (yyyyangyi/CNNs-for-Multi-Source-Remote-Sensing-Data-Fusion) fixes the
details below.

A DGConv keeps a dense weight W (C_out x C_in x k x k) and multiplies it by a
binary relationship matrix U built from K = ceil(log2 C) latent gates ĝ:

    g = (sign(ĝ) + 1) / 2                      (straight-through: the gradient of g goes to ĝ unchanged)
    U = U_1 ⊗ U_2 ⊗ ... ⊗ U_K,   U_k = (1 - g_k) I_2 + g_k 1_{2x2}
    W' = W ⊙ U   (broadcast over the kernel),   groups = 2^(K - Σg)

- `sort=True` (the remote-sensing code's default; d-li14's code leaves it
  off) orders the factors by (1 - g) descending, so U = I ⊗ ... ⊗ I ⊗ 1 ⊗ ... ⊗ 1
  is block-diagonal with contiguous groups of 2^Σg channels. Unsorted, the
  groups are strided.
- C_in != C_out (remote-sensing code): when C_out >= 2 C_in ("group-up"), K
  comes from C_in and U's rows are repeated r = ceil(C_out / C_in) times;
  when C_in >= 2 C_out ("group-down"), K comes from C_out and U's columns are
  repeated; otherwise K = ceil(log2 max(C_in, C_out)). U is then cropped to
  C_out x C_in. The official group-up/down multiply by I ⊗ 1_{r x 1}, which
  needs C_in (C_out) to be a power of two; we repeat rows (columns) of U
  instead, which is the same matrix there and also defined elsewhere.
  Note that a crop can leave input channels unconnected: for 66 -> 64
  channels (K = 7), channels 64 and 65 reach the output only when all seven
  gates are on.
- `regularizer()` is 2^(K + Σg), the number of non-zeros of the square U,
  with the straight-through gradient. The remote-sensing code computes it and
  never uses it; its weight in a training loss is the caller's (0 there).
- `groups > 1` multiplies U by the official optional fixed mask
  1_{(C_out/G) x (C_in/G)} ⊗ I_G (strided groups).
- Gates start at ±1e-8 with random signs (drawn from torch's generator, so
  `torch.manual_seed` fixes them; the official code uses Python's `random`).

`FGConv2d` is the remote-sensing code's fixed grouping: a block-diagonal U
from per-source channel splits (`in_groups`, `out_groups`), the mask of a
multi-stream network written as one convolution.

Both keep the dense weight under `conv.weight`; `core.ops.static_groups`
turns a trained one into a real grouped convolution. In eval mode a DGConv
uses its mask as a constant, rebuilt only when the gates change (so no
gradient reaches the gates there, and the masked network exports to ONNX).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _BinaryGate(torch.autograd.Function):
    """(sign(x) + 1) / 2 forward, identity backward: the straight-through estimator of the paper's code."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor) -> torch.Tensor:
        return (torch.sign(gate) + 1) / 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def binary_gates(gate: torch.Tensor) -> torch.Tensor:
    """Hard gates in {0, 1} (0.5 for a gate of exactly 0, as in the official code) with a straight-through gradient."""
    if torch.is_grad_enabled() and gate.requires_grad:
        return _BinaryGate.apply(gate)
    return (torch.sign(gate) + 1) / 2


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kronecker product of two matrices by broadcasting (differentiable)."""
    return (a[:, None, :, None] * b[None, :, None, :]).reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])


def kronecker_mask(g: torch.Tensor, sort: bool = True) -> torch.Tensor:
    """U = ⊗_k ((1 - g_k) I_2 + g_k 1_{2x2}) for gate values `g` (K,), factors sorted by (1 - g) descending
    when `sort` (contiguous groups)."""
    if sort:
        order = torch.argsort((1 - g).detach(), descending=True, stable=True)
        g = g[order]
    eye = torch.eye(2, dtype=g.dtype, device=g.device)
    ones = torch.ones(2, 2, dtype=g.dtype, device=g.device)
    u = torch.ones(1, 1, dtype=g.dtype, device=g.device)
    for k in range(g.shape[0]):
        u = kron(u, (1 - g[k]) * eye + g[k] * ones)
    return u


def block_mask(in_groups: Sequence[int], out_groups: Sequence[int]) -> torch.Tensor:
    """The C_out x C_in block-diagonal 0/1 matrix joining out_groups[i] outputs to in_groups[i] inputs."""
    if len(in_groups) != len(out_groups):
        raise ValueError(f"in_groups {list(in_groups)} and out_groups {list(out_groups)} differ in length")
    if any(int(n) <= 0 for n in list(in_groups) + list(out_groups)):
        raise ValueError(f"group sizes must be positive, got in_groups={list(in_groups)} out_groups={list(out_groups)}")
    mask = torch.zeros(sum(out_groups), sum(in_groups))
    r = c = 0
    for n_in, n_out in zip(in_groups, out_groups):
        mask[r:r + n_out, c:c + n_in] = 1
        r, c = r + n_out, c + n_in
    return mask


def even_split(channels: int, parts: int) -> list[int]:
    """`channels` in `parts` contiguous groups whose sizes differ by at most one (the larger first)."""
    base, extra = divmod(channels, parts)
    return [base + (i < extra) for i in range(parts)]


class DGConv2d(nn.Module):
    """A convolution whose channel grouping is learned through Kronecker-structured gates (module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True, sort: bool = True, groups: int = 1,
                 gate_init: float = 1e-8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=bias)
        self.in_channels, self.out_channels, self.sort = in_channels, out_channels, sort
        if out_channels // in_channels >= 2:
            self.mode, self.K = "up", math.ceil(math.log2(in_channels)) if in_channels > 1 else 1
            self.repeat = math.ceil(out_channels / in_channels)
        elif in_channels // out_channels >= 2:
            self.mode, self.K = "down", math.ceil(math.log2(out_channels)) if out_channels > 1 else 1
            self.repeat = math.ceil(in_channels / out_channels)
        else:
            self.mode, self.K = "crop", max(1, math.ceil(math.log2(max(in_channels, out_channels))))
            self.repeat = 1
        signs = torch.randint(0, 2, (self.K,)).float() * 2 - 1
        self.gate = nn.Parameter(signs * gate_init)
        self.groups = groups
        if groups > 1:
            if in_channels % groups or out_channels % groups:
                raise ValueError(f"DGConv2d: groups={groups} must divide in_channels={in_channels} and "
                                 f"out_channels={out_channels}")
            fixed = kron(torch.ones(out_channels // groups, in_channels // groups), torch.eye(groups))
            self.register_buffer("group_mask", fixed)
        else:
            self.group_mask = None
        self._eval_mask: torch.Tensor | None = None
        self._eval_key: tuple | None = None

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, K={self.K}, mode={self.mode}, sort={self.sort}"

    def train(self, mode: bool = True) -> "DGConv2d":
        super().train(mode)
        if not mode:
            self.frozen_mask()  # ready before any tracing (ONNX export) starts
        return self

    def frozen_mask(self) -> torch.Tensor:
        """The mask as a constant, recomputed only when the gates change (what eval mode uses)."""
        key = (self.gate._version, self.gate.data_ptr(), self.gate.device)
        if self._eval_key != key or self._eval_mask is None:
            with torch.no_grad():
                self._eval_mask = self.mask().detach()
            self._eval_key = key
        return self._eval_mask

    def hard_gates(self) -> torch.Tensor:
        """The gates as used in the forward pass, in {0, 1} (straight-through gradient)."""
        return binary_gates(self.gate)

    def mask(self) -> torch.Tensor:
        """The C_out x C_in relationship matrix U (0/1 entries) the weight is multiplied by."""
        u = kronecker_mask(self.hard_gates(), self.sort)
        if self.mode == "up":
            u = kron(u, torch.ones(self.repeat, 1, dtype=u.dtype, device=u.device))
        elif self.mode == "down":
            u = kron(u, torch.ones(1, self.repeat, dtype=u.dtype, device=u.device))
        u = u[: self.out_channels, : self.in_channels]
        if self.group_mask is not None:
            u = u * self.group_mask
        return u

    def regularizer(self) -> torch.Tensor:
        """2^(K + Σg): the number of non-zeros of the square K-factor U (gradient through the gates)."""
        return 2 ** (self.K + self.hard_gates().sum())

    def nominal_groups(self) -> float:
        """2^(K - Σg), the number of groups of the square U before any crop or repeat."""
        return float(2 ** (self.K - float(self.hard_gates().detach().sum())))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask() if self.training else self.frozen_mask()
        weight = self.conv.weight * mask[:, :, None, None]
        return F.conv2d(x, weight, self.conv.bias, self.conv.stride, self.conv.padding, self.conv.dilation)


class FGConv2d(nn.Module):
    """A convolution with a fixed block-diagonal grouping from channel splits (the multi-stream baseline).

    `in_groups=[64, 2], out_groups=[32, 32]` joins the first 64 input channels
    to the first 32 outputs and the last 2 to the last 32, as the official
    ResNet stem for MUUFL; `None` for both is a dense convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True, in_groups: Sequence[int] | None = None,
                 out_groups: Sequence[int] | None = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              dilation=dilation, bias=bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        if (in_groups is None) != (out_groups is None):
            raise ValueError("FGConv2d: give both in_groups and out_groups, or neither")
        if in_groups is None:
            mask = torch.ones(out_channels, in_channels)
        else:
            if sum(in_groups) != in_channels or sum(out_groups) != out_channels:
                raise ValueError(f"FGConv2d: in_groups {list(in_groups)} must sum to {in_channels} and out_groups "
                                 f"{list(out_groups)} to {out_channels}")
            mask = block_mask(in_groups, out_groups)
        self.in_groups = list(in_groups) if in_groups is not None else None
        self.out_groups = list(out_groups) if out_groups is not None else None
        self.register_buffer("U", mask)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, in_groups={self.in_groups}, out_groups={self.out_groups}"

    def mask(self) -> torch.Tensor:
        return self.U

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight * self.U[:, :, None, None]
        return F.conv2d(x, weight, self.conv.bias, self.conv.stride, self.conv.padding, self.conv.dilation)


def dgconv_layers(model: nn.Module) -> list[tuple[str, DGConv2d]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DGConv2d)]


def dgconv_regularizer(model: nn.Module) -> torch.Tensor:
    """Σ over the model's DGConv layers of 2^(K + Σg) (a zero tensor when there are none)."""
    terms = [m.regularizer() for _, m in dgconv_layers(model)]
    return torch.stack(terms).sum() if terms else torch.zeros(())


__all__ = ["DGConv2d", "FGConv2d", "binary_gates", "block_mask", "dgconv_layers", "dgconv_regularizer",
           "even_split", "kron", "kronecker_mask"]
