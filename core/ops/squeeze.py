"""Widening and squeezing quantized networks.

Liu, Han, Wang, Chen, Xu, Tian. "Widening and Squeezing: Towards Accurate
and Efficient QNNs", arXiv 2002.00555. The idea (abstract): project the
full-precision features into *wider* quantized features, so that the
quantized representation has more dimensions than the full-precision one
and loses less, then *squeeze* out the redundant quantized features so the
cost does not grow with the width.

The paper's widening factor and elimination criterion are not known to us,
so both are our choices:

- **Widening.** In a residual block of a quantized ResNet
  (`core.zoo.resnet`, `conv: {name: binary_conv}`, `widen: w`) the
  full-precision residual stream keeps C channels while the quantized
  features between the block's two quantized convolutions have w * C. The
  stem, the projection shortcuts and the classifier stay full precision (as
  in XNOR-Net and Bi-Real Net).
- **Squeezing criterion: redundancy of the quantized features.** On a
  calibration batch we record the features the second convolution actually
  consumes (its input after quantization: sign for binary layers) and
  measure, for every channel, how well another channel predicts it: the
  largest absolute Pearson correlation between its flattened map and any
  other kept channel's (a channel and its negation are equally redundant,
  since the next layer's weight can flip the sign). A channel that is
  constant over the batch carries no information beyond a bias and counts
  as fully redundant (1). Channels are removed greedily, the most redundant
  first, recomputing against the channels still kept, until `keep_ratio` of
  them remain (at least one). The removed channels' weights are dropped
  (output channels of the first convolution and its BatchNorm, input
  channels of the second) and the network is fine-tuned.

`squeeze_blocks(model, batches, keep_ratio)` does this in place for every
block that has `conv1`, `bn2` and `conv2`; it returns the kept channel
indices per block.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["redundancy", "squeeze_order", "select_channels", "squeeze_blocks"]


def _abs_correlation(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """|Pearson correlation| between channels (zero diagonal) and a mask of the constant channels."""
    flat = features.transpose(0, 1).reshape(features.shape[1], -1).double()
    centred = flat - flat.mean(1, keepdim=True)
    norm = centred.norm(dim=1)
    unit = centred / norm.clamp_min(1e-12)[:, None]
    corr = (unit @ unit.T).abs()
    corr.fill_diagonal_(0)
    return corr, norm < 1e-9


def _redundancy(corr: torch.Tensor, constant: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    r = (corr * kept[None, :]).max(dim=1).values
    r[constant] = 1.0
    r[~kept] = -1.0
    return r


def redundancy(features: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Per channel, the largest |correlation| with another kept channel (1 for a constant channel).

    `features` is (N, C, H, W) or (samples, C); `kept` a bool mask of the
    channels still in play (default all); removed channels get -1.
    """
    corr, constant = _abs_correlation(features)
    kept = torch.ones(features.shape[1], dtype=torch.bool) if kept is None else kept
    return _redundancy(corr, constant, kept)


def squeeze_order(features: torch.Tensor) -> list[int]:
    """Channels in the order the greedy criterion removes them (most redundant first; the last one is kept)."""
    corr, constant = _abs_correlation(features)
    kept = torch.ones(features.shape[1], dtype=torch.bool)
    order = []
    for _ in range(features.shape[1] - 1):
        worst = int(_redundancy(corr, constant, kept).argmax())
        order.append(worst)
        kept[worst] = False
    return order


def select_channels(features: torch.Tensor, keep: int) -> list[int]:
    """The sorted indices of the `keep` channels left after greedy removal."""
    channels = features.shape[1]
    keep = max(1, min(channels, int(keep)))
    removed = set(squeeze_order(features)[:channels - keep])
    return [c for c in range(channels) if c not in removed]


def _quantized_input(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `conv` computes with: its quantized input when it quantizes one, else the input itself."""
    if getattr(conv, "act_bits", None) == 1:
        return torch.where(x >= 0, 1.0, -1.0)
    if getattr(conv, "act_bits", None):
        levels = 2 ** conv.act_bits - 1
        return torch.round(x.clamp(0, 1) * levels) / levels
    return x


def _narrow_conv(conv: nn.Conv2d, out_idx: list[int] | None, in_idx: list[int] | None) -> nn.Conv2d:
    """A copy of `conv` keeping the given output / input channels (dense convolutions)."""
    weight = conv.weight.detach()
    if out_idx is not None:
        weight = weight[out_idx]
    if in_idx is not None:
        weight = weight[:, in_idx]
    new = copy.deepcopy(conv)
    new.weight = nn.Parameter(weight.clone())
    if conv.bias is not None and out_idx is not None:
        new.bias = nn.Parameter(conv.bias.detach()[out_idx].clone())
    new.out_channels, new.in_channels = weight.shape[0], weight.shape[1]
    return new


def _narrow_bn(bn: nn.BatchNorm2d, idx: list[int]) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


@torch.no_grad()
def squeeze_blocks(model: nn.Module, batches: Iterable[torch.Tensor], keep_ratio: float) -> dict[str, list[int]]:
    """Squeeze every block with `conv1`, `bn2`, `conv2` to `keep_ratio` of its middle channels, in place.

    `batches` are input tensors (a calibration set, e.g. a few training
    batches without augmentation); the features are recorded in eval mode.
    """
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio: expected a number in (0, 1], got {keep_ratio!r}")
    blocks = {name: m for name, m in model.named_modules()
              if all(isinstance(getattr(m, a, None), nn.Module) for a in ("conv1", "bn2", "conv2"))}
    recorded: dict[str, list[torch.Tensor]] = {name: [] for name in blocks}
    handles = []
    for name, block in blocks.items():
        def hook(module, inputs, name=name):
            x = inputs[0]
            recorded[name].append(_quantized_input(module, x))
        handles.append(block.conv2.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    kept = {}
    for name, block in blocks.items():
        features = torch.cat(recorded[name])
        keep = max(1, round(keep_ratio * features.shape[1]))
        idx = select_channels(features, keep)
        block.conv1 = _narrow_conv(block.conv1, idx, None)
        block.bn2 = _narrow_bn(block.bn2, idx)
        block.conv2 = _narrow_conv(block.conv2, None, idx)
        kept[name] = idx
    return kept
