"""Ordered dropout and channel-level bypass connections (CBC), the layers of NetAdaptV2.

Yang, Liao, Sze. "NetAdaptV2: Efficient Neural Architecture Search with Fast
Super-Network Training and Architecture Optimization", CVPR 2021
(arXiv 2104.00031), Sec. 2.2 (channel-level bypass connections) and Sec. 2.3
(ordered dropout). No official code is public.

Ordered dropout (Sec. 2.3). A layer of the super-network keeps its *first*
k output channels and zeroes the rest, so every width k of the layer is a
leading slice of the same weights and a narrower network is a sub-network of
the wider one. Because the zeroing is a mask, different images of one
mini-batch can use different k: one forward-backward pass then trains as many
sub-networks as there are images ("train multiple DNNs in a single
forward-backward pass", the paper's abstract and Sec. 1). Every op here takes
a `width` argument per forward:

- `None`: all channels (a standalone network built at its exact size);
- an `int` k: the first k channels are computed and the rest *truncated*
  (the output has k channels; the next layer slices its input channels to
  match). This is the sub-network's own compute and is what evaluating a
  sampled network uses;
- a `LongTensor` of shape (batch,): per-image widths; all channels are
  computed and channel c of image b is zeroed when c >= width[b] (the
  *mask* form, used for training).

Both forms give the same numbers (truncation drops exactly the channels the
mask zeroes, and a zero input channel adds nothing to a convolution).

BatchNorm under per-image masks. A channel zeroed for some images is not part
of those images' sub-networks, so `OrderedBatchNorm2d` computes each
channel's batch statistics over the images that keep it (mask-weighted mean
and variance) and updates the running statistics from those. This is our
choice: the paper text we could consult does not say how BN statistics are
handled during ordered-dropout training. BN statistics of a sampled network
are re-estimated before it is scored (NetAdaptV2Searcher's `bn_batches`).

Channel-level bypass connections (Sec. 2.2). For a layer f whose input x and
output have the same spatial size, output channel c is f(x)_c when the
channel is kept (c < k) and the bypassed input channel x_c otherwise
(`channel_bypass`). Removing channels therefore turns them into identities,
and a layer with k = 0 is the identity: the network loses a layer. Depth and
width become one search dimension ("merge network depth and layer width into
a single search dimension", Sec. 1). When the layer is wider than its input
(k > channels of x), the channels beyond x's are f's own, and input channels
beyond k pass through; so the output has max(k, channels of x) channels,
exactly what the zero-padded super-network computes. For an inverted-residual
block the bypass is its residual path: a block whose expansion width is 0 is
the identity (`add_padded` adds the block's output to the leading channels of
its input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

Width = Union[None, int, torch.Tensor]

__all__ = ["Width", "width_mask", "ordered_dropout", "channel_bypass", "add_padded", "sample_widths",
           "OrderedConv2d", "OrderedBatchNorm2d", "OrderedLinear", "OrderedDropout"]


def _is_mask(width: Width) -> bool:
    return isinstance(width, torch.Tensor)


def width_mask(width: torch.Tensor, channels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch, channels) mask: 1 where channel c < width[b], else 0."""
    index = torch.arange(channels, device=width.device)
    return (index[None, :] < width.reshape(-1, 1)).to(dtype)


def _mask_like(x: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """The ordered mask of `width` shaped to broadcast against x (batch, channels, ...)."""
    if width.numel() != x.shape[0]:
        raise ValueError(f"ordered dropout: {width.numel()} widths for a batch of {x.shape[0]}")
    mask = width_mask(width.to(x.device), x.shape[1], x.dtype)
    return mask.reshape(mask.shape + (1,) * (x.dim() - 2))


def ordered_dropout(x: torch.Tensor, width: Width) -> torch.Tensor:
    """Keep the first `width` channels of x (dim 1): truncate for an int, zero per image for a tensor."""
    if width is None:
        return x
    if _is_mask(width):
        return x * _mask_like(x, width)
    if width < 0:
        raise ValueError(f"ordered dropout: width must be >= 0, got {width}")
    return x[:, :width] if width < x.shape[1] else x


def add_padded(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + y over their leading channels; the wider one's extra channels pass through (zero padding)."""
    if x.shape[1] == y.shape[1]:
        return x + y
    if x.shape[1] < y.shape[1]:
        x, y = y, x
    return torch.cat([x[:, :y.shape[1]] + y, x[:, y.shape[1]:]], 1)


def channel_bypass(y: torch.Tensor, x: torch.Tensor, width: Width = None) -> torch.Tensor:
    """CBC (NetAdaptV2 Sec. 2.2): output channel c is y_c for c < width, else the input channel x_c.

    `y` is the layer's output, `x` its input (same spatial size). `width`
    None means all of y's channels are kept (a standalone layer of exactly
    that width); an int keeps the first `width` of y; a (batch,) tensor is
    the per-image mask form (y and x then have the same channels, as in the
    super-network). Width 0 returns x: the layer is bypassed.
    """
    if y.shape[2:] != x.shape[2:]:
        raise ValueError(f"channel bypass needs equal spatial sizes, got {tuple(y.shape[2:])} "
                         f"and {tuple(x.shape[2:])}")
    if _is_mask(width):
        if y.shape[1] != x.shape[1]:
            raise ValueError("channel bypass with per-image widths needs input and output of equal width")
        mask = _mask_like(y, width)
        return y * mask + x * (1 - mask)
    k = y.shape[1] if width is None else int(width)
    if k == 0:
        return x
    y = y[:, :k]
    return torch.cat([y, x[:, k:]], 1) if x.shape[1] > k else y


def sample_widths(options: Sequence[int], batch: int, generator: torch.Generator | None = None,
                  per_image: bool = True) -> torch.Tensor:
    """Widths drawn uniformly from `options`: one per image (`per_image`) or one for the whole batch."""
    table = torch.as_tensor(list(options), dtype=torch.long)
    n = batch if per_image else 1
    index = torch.randint(len(table), (n,), generator=generator)
    return table[index].expand(batch).clone() if not per_image else table[index]


class OrderedConv2d(nn.Conv2d):
    """A Conv2d whose input and output widths follow the tensors and `width` of each forward.

    Input channels are the first `x.shape[1]` of the weight (an upstream layer
    may have been truncated); output channels follow `width` (see the module
    docstring). Dense (groups=1) and depthwise (groups = in = out channels)
    convolutions are supported; a depthwise conv's width is its input's.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.depthwise = self.groups > 1
        if self.depthwise and not (self.groups == self.in_channels == self.out_channels):
            raise ValueError("OrderedConv2d supports dense or depthwise convolutions only")

    def forward(self, x: torch.Tensor, width: Width = None) -> torch.Tensor:
        c_in = x.shape[1]
        if c_in > self.in_channels:
            raise ValueError(f"OrderedConv2d: input has {c_in} channels, the layer at most {self.in_channels}")
        weight, bias, groups = self.weight, self.bias, 1
        if self.depthwise:
            weight, groups = weight[:c_in], c_in
            bias = bias[:c_in] if bias is not None else None
        else:
            if c_in < self.in_channels:
                weight = weight[:, :c_in]
            if isinstance(width, int) and width < self.out_channels:
                weight = weight[:width]
                bias = bias[:width] if bias is not None else None
        if weight.shape[0] == 0:  # width 0: no output channels
            size = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in
                    zip(x.shape[2:], self.padding, self.dilation, self.kernel_size, self.stride)]
            return x.new_zeros(x.shape[0], 0, *size)
        y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)
        return y * _mask_like(y, width) if _is_mask(width) else y


class OrderedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the leading `x.shape[1]` channels; with per-image widths, masked batch statistics.

    With a (batch,) width tensor in training mode, channel c's mean and
    variance are taken over the images whose width exceeds c only, and its
    running statistics are updated from those (channels no image keeps are
    left alone); the output is masked. In eval mode the running statistics
    are used as usual.
    """

    def forward(self, x: torch.Tensor, width: Width = None) -> torch.Tensor:
        if isinstance(width, int) and width < x.shape[1]:
            x = x[:, :width]
        c = x.shape[1]
        if c == 0:
            return x
        if c > self.num_features:
            raise ValueError(f"OrderedBatchNorm2d: input has {c} channels, the layer at most {self.num_features}")
        weight = self.weight[:c] if self.weight is not None else None
        bias = self.bias[:c] if self.bias is not None else None
        mean = self.running_mean[:c] if self.running_mean is not None else None
        var = self.running_var[:c] if self.running_var is not None else None
        use_batch = self.training or mean is None
        if not _is_mask(width) or not use_batch:
            factor = 0.0
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            y = F.batch_norm(x, mean if not use_batch or self.track_running_stats else None,
                             var if not use_batch or self.track_running_stats else None,
                             weight, bias, use_batch, factor, self.eps)
            return y * _mask_like(y, width) if _is_mask(width) else y
        return self._masked(x, width, weight, bias, mean, var)

    def _masked(self, x, width, weight, bias, running_mean, running_var) -> torch.Tensor:
        mask = _mask_like(x, width)
        dims = [0] + list(range(2, x.dim()))
        count = mask.sum(dims) * (x[0, 0].numel())
        safe = count.clamp_min(1.0)
        mu = (x * mask).sum(dims) / safe
        shape = (1, -1) + (1,) * (x.dim() - 2)
        centred = (x - mu.reshape(shape)) * mask
        sigma2 = (centred * centred).sum(dims) / safe
        y = (x - mu.reshape(shape)) * torch.rsqrt(sigma2.reshape(shape) + self.eps)
        if weight is not None:
            y = y * weight.reshape(shape) + bias.reshape(shape)
        if self.track_running_stats and running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                seen = count > 1
                unbiased = sigma2 * count / (count - 1).clamp_min(1.0)
                running_mean.copy_(torch.where(seen, (1 - factor) * running_mean + factor * mu.detach(),
                                               running_mean))
                running_var.copy_(torch.where(seen, (1 - factor) * running_var + factor * unbiased.detach(),
                                              running_var))
        return y * mask


class OrderedLinear(nn.Linear):
    """A Linear layer over the first `x.shape[-1]` input features, output width per forward."""

    def forward(self, x: torch.Tensor, width: Width = None) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if x.shape[-1] < self.in_features:
            weight = weight[:, :x.shape[-1]]
        if isinstance(width, int) and width < self.out_features:
            weight = weight[:width]
            bias = bias[:width] if bias is not None else None
        y = F.linear(x, weight, bias)
        return y * _mask_like(y, width) if _is_mask(width) else y


class OrderedDropout(nn.Module):
    """`ordered_dropout` as a module: `OrderedDropout()(x, width)`."""

    def forward(self, x: torch.Tensor, width: Width = None) -> torch.Tensor:
        return ordered_dropout(x, width)
