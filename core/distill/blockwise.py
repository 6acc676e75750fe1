"""Blockwise distillation and scoring, DNA's method (Li et al., "Blockwisely Supervised Neural Architecture Search
with Knowledge Distillation", CVPR 2020, arXiv 1911.13053, Sec. 3.2-3.3; official code github.com/changlin31/DNA).

A supernet is cut into blocks aligned with a teacher's stages. Block i takes
the teacher's stage i-1 output (the image for block 0) and learns to produce
the teacher's stage i output under MSE, one uniformly sampled path per step
(`searching/dna/distill_train.py`, `guide_input: true`): the blocks train
independently, so a candidate's quality can be read block by block. A
candidate is then scored per block, after re-estimating the BatchNorm
statistics of its path on a reset batch, by `cl_loss = mean|y_hat - y| /
std(y)` (`_potential`; also `loss` = MSE and `rela_loss` = MSE / Var(y)), and
a network's score is the sum over its blocks (`process_potential.py`,
`loss_join='sum'`); lower is better.

These functions work on any blocks and any teacher seen through
`StagedTeacher`: `core.oneshot.dna` (DNA's own space, every path of every
block ranked, then a constrained traversal) and `core.oneshot.dna_ranking`
(a list of cell201 candidates scored as a one-shot estimator) both use them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.api import activate
from core.distill.teachers import StagedTeacher
from core.engine.meter import StepMeter


def guide_and_target(x: torch.Tensor, features: Sequence[torch.Tensor], index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block `index`'s input (the teacher's previous stage output, the image for block 0) and its target."""
    return (x if index == 0 else features[index - 1]), features[index]


def train_block(block: nn.Module, index: int, teacher: StagedTeacher, loader: Iterable,
                sample: Callable[[], Mapping[str, Any]], optimizer: torch.optim.Optimizer, steps: int,
                steps_per_epoch: int, lr_decay: float = 0.9, device: torch.device | str | None = None,
                on_step: Callable[[int], None] | None = None,
                log_every: int = 50) -> list[list[tuple[float, int]]]:
    """Train `block` to map the teacher's stage `index`-1 output to its stage `index` output (DNA step 1).

    Every step activates the path `sample()` returns and takes one MSE step.
    The `steps` steps run in epochs of at most `steps_per_epoch` (a pass over
    `loader` at most, each pass a new shuffle); after every full epoch the
    learning rate is multiplied by `lr_decay` (DNA's 0.9 per epoch). Returns
    each epoch's (loss, batch size) per step; `on_step(batch size)` is called
    after each step (progress bars). The losses stay on the device and are
    read once per epoch; a NaN or infinite loss is caught every `log_every`
    steps (`core.engine.meter.StepMeter`).
    """
    epochs: list[list[tuple[float, int]]] = []
    done = 0
    meter = StepMeter(f"DNA block {index} loss", log_every)
    where = "; lower the learning rate"
    while done < steps:
        block.train()
        losses: list[torch.Tensor] = []
        sizes: list[int] = []
        for x, *_ in loader:
            if len(losses) >= steps_per_epoch or done >= steps:
                break
            x = x.to(device, non_blocking=True) if device is not None else x
            guide, target = guide_and_target(x, teacher(x, upto=index), index)
            activate(block, sample())
            loss = F.mse_loss(block(guide), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            sizes.append(len(x))
            meter.add(loss=loss)
            meter.step(where)
            done += 1
            if on_step is not None:
                on_step(len(x))
        if not losses:
            raise ValueError(f"DNA block {index}: the training loader gave no batch")
        meter.check(where)
        epoch = list(zip(torch.stack(losses).double().cpu().tolist(), sizes))  # one host read per epoch
        epochs.append(epoch)
        if len(epoch) == steps_per_epoch:
            for group in optimizer.param_groups:
                group["lr"] *= lr_decay
    return epochs


def batchnorms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `module` that track running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate(block: nn.Module, inputs: Iterable[torch.Tensor],
                layers: Sequence[nn.modules.batchnorm._BatchNorm] | None = None) -> None:
    """Reset the BN statistics of `layers` (default: all of `block`'s) and re-estimate them as the plain average
    over `inputs` (BN momentum None, restored afterwards); leaves `block` in eval mode.

    DNA scores a path after recomputing its statistics on a reset batch: the shared weights' running statistics
    mix every path trained."""
    layers = batchnorms(block) if layers is None else list(layers)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    block.train()
    try:
        for x in inputs:
            block(x)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        block.eval()


def block_losses(out: torch.Tensor, target: torch.Tensor, std: torch.Tensor | None = None,
                 var: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DNA's per-block scores of `out` against the teacher's `target`: (cl_loss, loss, rela_loss) =
    (mean|out - target| / std(target), MSE, MSE / Var(target)). `std`, `var`: the target's, when already known."""
    std = target.std() if std is None else std
    var = target.var() if var is None else var
    mse = F.mse_loss(out, target)
    return (out - target).abs().mean() / (std + 1e-9), mse, mse / (var + 1e-9)


def teacher_features(teacher: StagedTeacher, batches: Iterable) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """(input, the teacher's stage outputs) for every batch: what scoring reuses across candidates."""
    return [(x, teacher(x)) for x, *_ in batches]


@torch.no_grad()
def score_archs(blocks: Sequence[nn.Module], archs: Sequence[Mapping[str, Any]],
                recal: Sequence[tuple[torch.Tensor, list[torch.Tensor]]],
                val: Sequence[tuple[torch.Tensor, list[torch.Tensor]]]) -> list[float]:
    """Each arch's summed cl_loss over the blocks (lower is better), DNA step 2 for a list of candidates.

    Per block: activate the arch, recalibrate the block's BN on the reset batches' guides `recal`, then average
    cl_loss over the scoring batches `val` (sample-weighted). Both hold `teacher_features` output.
    """
    scores = []
    for arch in archs:
        total_score = 0.0
        for i, block in enumerate(blocks):
            activate(block, arch)
            recalibrate(block, [guide_and_target(x, feats, i)[0] for x, feats in recal])
            total, seen = 0.0, 0
            for x, feats in val:
                guide, target = guide_and_target(x, feats, i)
                total += float(block_losses(block(guide), target)[0]) * len(x)
                seen += len(x)
            total_score += total / seen
        scores.append(total_score)
    return scores


__all__ = ["guide_and_target", "train_block", "batchnorms", "recalibrate", "block_losses", "teacher_features",
           "score_archs"]
