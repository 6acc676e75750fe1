"""DARTS's second-order architecture gradient: one unrolled weight step and a finite-difference Hessian term.

Liu, Simonyan, Yang, "DARTS: Differentiable Architecture Search", ICLR 2019,
eq. 6-8; official code github.com/quark0/darts `cnn/architect.py`. The
bilevel objective's gradient is approximated at w' = w - xi grad_w L_train(w, alpha),
one step of the weight optimiser:

    grad_alpha L_val(w', alpha) - xi grad^2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)     (eq. 7)

and the second-order term by central differences around w

    [grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)] / (2 r),
    w+- = w +- r v,  v = grad_w' L_val(w', alpha),  r = eps / ||v||  (eps 0.01)              (eq. 8)

As in `architect._compute_unrolled_model`, xi is the weight optimiser's
current learning rate and the unrolled step includes its momentum buffer and
weight decay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def unrolled_gradients(model: nn.Module, train_loss: Callable[[], torch.Tensor], val_loss: Callable[[], torch.Tensor],
                       alphas: list[nn.Parameter], weights: list[nn.Parameter], eta: float, momentum: float = 0.0,
                       weight_decay: float = 0.0, eps: float = 0.01,
                       optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    """Eq. 7-8 for `alphas`; `train_loss()` and `val_loss()` recompute the two losses at the current weights.

    `optimizer` (SGD) supplies the momentum buffers of the unrolled step. The weights and the model's buffers
    (BN running statistics) are restored before returning: the official code runs the unrolled forward on a
    throw-away copy of the model.
    """
    buffers = [b.detach().clone() for b in model.buffers()]
    backup = [w.detach().clone() for w in weights]
    try:
        # w' = w - eta (momentum * buffer + grad_w L_train + weight_decay * w)
        grads = torch.autograd.grad(train_loss(), weights, allow_unused=True)
        with torch.no_grad():
            for w, g in zip(weights, grads):
                step = (torch.zeros_like(w) if g is None else g) + weight_decay * w
                state = optimizer.state.get(w, {}) if optimizer is not None else {}
                if state.get("momentum_buffer") is not None:
                    step = step + momentum * state["momentum_buffer"]
                w.sub_(eta * step)
        # grad_alpha L_val(w', alpha) and v = grad_w' L_val(w', alpha)
        params = list(alphas) + list(weights)
        grads = torch.autograd.grad(val_loss(), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        d_alpha, vector = grads[:len(alphas)], grads[len(alphas):]
        norm = torch.sqrt(sum((v * v).sum() for v in vector))
        # r = eps / ||v|| as a device scalar (no host read); a zero v gives a zero implicit term
        r = eps / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        implicit = []
        for sign in (1.0, -1.0):  # grad_alpha L_train(w +- r v, alpha)
            with torch.no_grad():
                for w, w0, v in zip(weights, backup, vector):
                    w.copy_(w0 + sign * r * v)
            g = torch.autograd.grad(train_loss(), alphas, allow_unused=True)
            implicit.append([torch.zeros_like(a) if gi is None else gi for a, gi in zip(alphas, g)])
        return [da - eta * (gp - gn) / (2 * r) for da, gp, gn in zip(d_alpha, *implicit)]
    finally:
        with torch.no_grad():
            for w, w0 in zip(weights, backup):
                w.copy_(w0)
            for b, b0 in zip(model.buffers(), buffers):
                b.copy_(b0)


__all__ = ["unrolled_gradients"]
