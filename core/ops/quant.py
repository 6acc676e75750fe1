"""Quantized convolutions (binary with a scaling factor, k-bit) and their bit-operation counts.

Binary (`BinaryConv2d`): activations and weights are binarized with `sign`
(sign(0) = +1). Weights carry a per-output-channel scaling factor alpha =
mean |W| (XNOR-Net: Rastegari et al., ECCV 2016, Sec. 3.1), so the
convolution computes alpha * (sign(x) (*) sign(W)). Gradients pass through
`sign` by the straight-through estimator of Hubara et al. ("Binarized Neural
Networks", NeurIPS 2016, Sec. 1.3): identity where |x| <= 1, zero elsewhere,
for activations; identity for the latent real weights.

k-bit (`QuantConv2d`, bits >= 2): DoReFa-Net (Zhou et al., arXiv 1606.06160,
Sec. 2.3-2.4). Weights: tanh(W) / (2 max|tanh(W)|) + 1/2 quantized to k bits
and mapped to [-1, 1]; activations clipped to [0, 1] and quantized to k bits;
`round` passes gradients straight through.

Bit-operations (`bit_operations`): a quantized layer of w-bit weights and
a-bit activations costs MACs * w * a bit-operations (BOPs); full-precision
layers are counted as MACs. `ops = fp_macs + bops / 64` is the combined
figure of Bi-Real Net (Liu et al., ECCV 2018, Sec. 4.3) and of the QNN
papers that followed it.

Registered operators (`core.engine.registry.OPS`): `binary_conv` and
`kbit_conv`, conv factories `(in, out, kernel, stride)` that a space names in
its config (`conv: {name: binary_conv}`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.engine.registry import OPS, ConfigError

__all__ = ["sign_ste", "quantize_ste", "BinaryConv2d", "QuantConv2d", "bit_operations", "BitCount",
           "weight_bits", "make_binary_conv", "make_kbit_conv"]


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, clip: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return (grad * (x.abs() <= 1).to(grad.dtype) if ctx.clip else grad), None


def sign_ste(x: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """sign(x) in {-1, +1}; backward passes the gradient where |x| <= 1 (`clip`) or everywhere.

    Without autograd (inference, export) it is a plain `where`, which ONNX and TorchScript take."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return _SignSTE.apply(x, clip)


def quantize_ste(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Round x in [0, 1] to 2^bits levels; the gradient passes straight through."""
    levels = 2 ** bits - 1
    return x + (torch.round(x * levels) / levels - x).detach()


class BinaryConv2d(nn.Conv2d):
    """Binary activations and weights, alpha = mean |W| per output channel (see the module docstring)."""

    weight_bits, act_bits = 1, 1

    def __init__(self, *args, scaling: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.scaling = scaling

    def quantized_weight(self) -> torch.Tensor:
        w = sign_ste(self.weight, clip=False)
        if self.scaling:
            w = w * self.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(sign_ste(x), self.quantized_weight(), self.bias)


class QuantConv2d(nn.Conv2d):
    """DoReFa k-bit weights and activations (see the module docstring)."""

    def __init__(self, *args, bits: int = 2, act_bits: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_bits, self.act_bits = int(bits), int(act_bits or bits)

    def quantized_weight(self) -> torch.Tensor:
        w = torch.tanh(self.weight)
        w = w / (2 * w.abs().max()) + 0.5
        return 2 * quantize_ste(w, self.weight_bits) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = quantize_ste(x.clamp(0, 1), self.act_bits)
        return self._conv_forward(x, self.quantized_weight(), self.bias)


@dataclass
class BitCount:
    bops: float  # bit-operations of the quantized layers (MACs * w_bits * a_bits)
    fp_macs: float  # multiply-accumulates of the full-precision layers

    @property
    def ops(self) -> float:
        """Bi-Real Net's OPs: FLOPs (MACs) of the full-precision layers + BOPs / 64."""
        return self.fp_macs + self.bops / 64


def _macs(module: nn.Module, out: torch.Tensor) -> float:
    if isinstance(module, nn.Conv2d):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        return float(out.numel() * k)
    return float(out.numel() * module.in_features)


@torch.no_grad()
def bit_operations(model: nn.Module, example: torch.Tensor) -> BitCount:
    """BOPs of every quantized conv and MACs of every full-precision conv and linear layer, for one `example`
    batch (divide by its batch size for per-image figures)."""
    counts = BitCount(0.0, 0.0)

    def hook(module, _inputs, output):
        macs = _macs(module, output)
        bits = getattr(module, "weight_bits", None)
        if bits is None:
            counts.fp_macs += macs
        else:
            counts.bops += macs * bits * module.act_bits

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return counts


def weight_bits(model: nn.Module) -> int:
    """Storage of all parameters in bits: quantized conv weights at their bit width, everything else at 32."""
    total = 0
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            bits = getattr(m, "weight_bits", 32) if name == "weight" else 32
            total += p.numel() * bits
    return total


@OPS.register("binary_conv")
def make_binary_conv(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                     scaling: bool = True) -> BinaryConv2d:
    return BinaryConv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False, scaling=scaling)


@OPS.register("kbit_conv")
def make_kbit_conv(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bits: int = 2,
                   act_bits: int | None = None) -> QuantConv2d:
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ConfigError(f"bits: expected an int in 2..16 (1 bit is binary_conv), got {bits!r}")
    return QuantConv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False, bits=bits,
                       act_bits=act_bits)
