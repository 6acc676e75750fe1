"""Static costs: parameters, FLOPs and MACs.

FLOPs here are what `torch.utils.flop_counter.FlopCounterMode` counts: 2 per
multiply-accumulate of convolutions, matrix products and attention. Element-wise
work (BatchNorm in eval mode, activations, the SE gate's multiply, additions of
residuals, pooling) is not counted. Papers that say "FLOPs" for mobile networks
(MobileNetV2, EfficientNet, DNA, ...) usually mean multiply-accumulates, so
compare their numbers with `count_macs`, which is `count_flops // 2`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, exclude: Sequence[str] = ("auxiliary",)) -> int:
    """Number of parameters (buffers such as BN running stats are not counted).

    Parameters whose qualified name contains any substring of `exclude` are
    skipped; the default leaves out DARTS-style auxiliary heads, which are
    dropped at inference. Shared parameters are counted once.
    """
    return sum(p.numel() for name, p in model.named_parameters()
               if not any(word in name for word in exclude))


def _as_inputs(inputs: Any, device: torch.device | None) -> tuple:
    """A tensor, a tuple/list of tensors, or a shape (tuple of ints, batch included) as model inputs."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    elif isinstance(inputs, (tuple, list, torch.Size)) and inputs and all(isinstance(d, int) for d in inputs):
        inputs = (torch.zeros(tuple(inputs)),)
    else:
        inputs = tuple(inputs)
    return tuple(x.to(device) if isinstance(x, torch.Tensor) and device is not None else x for x in inputs)


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return None


def count_flops(model: nn.Module, inputs: Any) -> int:
    """FLOPs of one forward pass on `inputs`, counted by torch's `FlopCounterMode`.

    FLOPs = 2 x multiply-accumulates (torch's convention); papers' "FLOPs" for
    mobile networks usually mean MACs, see `count_macs`. `inputs` is a tensor,
    a tuple of tensors, or a full input shape such as `(1, 3, 224, 224)` (the
    count scales with the batch size in it). The model runs in eval mode under
    `torch.no_grad`; its training flag is restored afterwards.
    """
    args = _as_inputs(inputs, _model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, inputs: Any) -> int:
    """Multiply-accumulates of one forward pass: `count_flops(model, inputs) // 2`.

    This is the number papers usually call "FLOPs" (e.g. EfficientNet-B0's
    0.39B, ResNet-18's 1.8G).
    """
    return count_flops(model, inputs) // 2
