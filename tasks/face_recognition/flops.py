"""FLOPs as the PocketNet paper counts them (official `utils/modelFLOPS.py::count_model_flops`).

The paper's "587.11 MFLOPs" for PocketNetS-128 is not MACs: the official
counter hooks every leaf module on one 1x3x112x112 input and adds

- convolution:  (2 * k_h * k_w * C_in / groups + bias) * C_out * H_out * W_out   (multiply and add counted apart)
- linear:       2 * weights (+ bias)
- BatchNorm:    2 * input elements
- PReLU/ReLU/Sigmoid: input elements
- max/avg pool: k * k * output elements;  adaptive average pool: input elements

and nothing for identities, `none` edges, additions of node inputs or
concatenations. `count_paper_flops` reproduces that sum; `core.cost.count_macs`
gives the multiply-accumulates of the convolutions alone, the number most
mobile papers call FLOPs. For PocketNetS-128 at 112x112 the two are 587.11 M
and 283.54 M (`tests/tasks/test_face_recognition_models.py`).
"""

from __future__ import annotations

import torch
from torch import nn


def count_paper_flops(model: nn.Module, input_size: int | tuple[int, int] = 112, in_channels: int = 3) -> int:
    """The official PocketNet FLOPs count of `model` on one `in_channels x H x W` input (see module docstring)."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = [0]

    def conv(m: nn.Conv2d, inputs, output):
        c_out, h_out, w_out = output[0].shape
        kernel = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels / m.groups)
        total[0] += (kernel * 2 + (1 if m.bias is not None else 0)) * c_out * h_out * w_out

    def linear(m: nn.Linear, inputs, output):
        batch = inputs[0].size(0) if inputs[0].dim() == 2 else 1
        total[0] += batch * (m.weight.numel() * 2 + (m.bias.numel() if m.bias is not None else 0))

    def bn(m, inputs, output):
        total[0] += inputs[0].numel() * 2

    def act(m, inputs, output):
        total[0] += inputs[0].numel()

    def pool(m, inputs, output):
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0] * m.kernel_size[1]
        k = k * k if isinstance(m.kernel_size, int) else k
        total[0] += k * output[0].numel()

    def adaptive(m, inputs, output):
        total[0] += inputs[0].numel()

    kinds = ((nn.Conv2d, conv), (nn.Linear, linear), ((nn.BatchNorm2d, nn.BatchNorm1d), bn),
             ((nn.ReLU, nn.PReLU, nn.Sigmoid, nn.ReLU6), act), ((nn.MaxPool2d, nn.AvgPool2d), pool),
             (nn.AdaptiveAvgPool2d, adaptive))
    handles = []
    for m in model.modules():
        if list(m.children()):
            continue
        for cls, hook in kinds:
            if isinstance(m, cls):
                handles.append(m.register_forward_hook(hook))
                break
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.rand(1, in_channels, h, w, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(round(total[0]))


__all__ = ["count_paper_flops"]
