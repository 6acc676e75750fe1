"""BatchNorm statistics of inherited weights: SPOS recomputes them per candidate before scoring (Guo et al.,
ECCV 2020, Sec. 3.4), and a digest identifies a supernet's weights in an evaluator's fingerprint."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches, device: torch.device | str | None = None) -> int:
    """Reset every BN layer's running statistics and re-estimate them as the plain average over `batches`.

    Runs the model in training mode without gradients, BN momentum set to
    None (cumulative average) and restored afterwards; leaves the model in
    eval mode. Returns the number of BN layers reset.
    """
    layers = batchnorm_layers(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for x, *_ in batches:
            model(x.to(device) if device is not None else x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return len(layers)


def state_digest(module: nn.Module) -> str:
    """A short hash of a module's weights and buffers (identifies the supernet in the fingerprint)."""
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
