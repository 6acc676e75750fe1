"""Sub-search-space screening with a column-sparse group lasso (Hit-Detector, Sec. 3.2).

Guo et al., CVPR 2020: each component (backbone, neck, head) has an
architecture matrix alpha in R^{L x N} (L searched layers, N = 32 candidate
ops); layer l outputs sum_o alpha[l, o] * o(x). The detection loss gets the
group-lasso term

    mu * sum_i ||alpha[:, i]||_2          (mu = 0.1, ablated over {0, 0.01, 0.1})

which drives whole columns (one op across all layers) to zero; the
lowest-ranked ops (smallest column norm) are removed gradually until 8 remain
per component. Components are screened one at a time (the others fixed) and
the backbone is halved to 2+2+4+2 blocks. Paper schedule: weights SGD
(cosine, lr 0.04), alpha Adam lr 4e-4 from epoch 6 of 12, no FLOPs term.

Here the mixture weights are the alpha entries themselves (the `linear`
relaxation registered below, initialised at 1/N), so a zero column means the
op contributes nothing anywhere; removed columns are zeroed, frozen and
skipped in the forward pass. Removal is spread evenly over the alpha steps:
after each of `rounds` equal segments the lowest-norm active columns go, so
that `keep` remain after the last. The official repository releases no
screening code; the removal schedule (how many per round) is ours.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from core.api import ChoiceModule, choice_modules
from core.api.relax import register_relaxation


def linear_weights(logits: torch.Tensor) -> torch.Tensor:
    """The architecture matrix's row used as mixture weights as is (no normalisation)."""
    return logits


register_relaxation("linear", linear_weights, sparse=True)  # zero (removed) columns are skipped in the forward pass


class GroupLassoScreen:
    """The architecture matrix of one component: rows = its ChoiceModules (same options), columns = ops."""

    def __init__(self, modules: Sequence[ChoiceModule], mu: float = 0.1, keep: int = 8):
        if not modules:
            raise ValueError("screening: the component has no searched layer")
        self.options = modules[0].choice.options
        for m in modules:
            if m.choice.options != self.options:
                raise ValueError(f"screening: layer {m.name!r} has other options than {modules[0].name!r}")
        if not 1 <= keep <= len(self.options):
            raise ValueError(f"screening.keep: expected 1..{len(self.options)}, got {keep!r}")
        unique: dict[int, ChoiceModule] = {}
        for m in modules:
            unique.setdefault(id(m.logits), m)
        self.modules = list(modules)
        self.rows = [m.logits for m in unique.values()]
        self.mu, self.keep = mu, keep
        self.active = torch.ones(len(self.options), dtype=torch.bool)
        with torch.no_grad():
            for row in self.rows:
                row.fill_(1.0 / len(self.options))
        for m in self.modules:
            m.set_mixture("linear")

    def matrix(self) -> torch.Tensor:
        return torch.stack(list(self.rows))

    def penalty(self) -> torch.Tensor:
        """mu * sum over columns of ||alpha[:, i]||_2 (active columns)."""
        norms = self.matrix()[:, self.active].norm(dim=0)
        return self.mu * norms.sum()

    def norms(self) -> dict[str, float]:
        col = self.matrix().detach().norm(dim=0)
        return {op: float(col[i]) for i, op in enumerate(self.options)}

    def remaining(self) -> list[str]:
        return [op for op, a in zip(self.options, self.active.tolist()) if a]

    def enforce(self) -> None:
        """Keep removed columns at exactly zero (after each optimiser step)."""
        with torch.no_grad():
            for row in self.rows:
                row[~self.active] = 0.0

    def drop(self, n: int) -> list[str]:
        """Remove the `n` active columns of smallest L2 norm (never below `keep`)."""
        n = min(n, int(self.active.sum()) - self.keep)
        if n <= 0:
            return []
        col = self.matrix().detach().norm(dim=0)
        col[~self.active] = math.inf
        order = torch.argsort(col)[:n]
        self.active[order.cpu()] = False  # the mask stays on the host; the norms may be on a GPU
        self.enforce()
        return [self.options[i] for i in order.tolist()]


def removal_plan(n_options: int, keep: int, rounds: int) -> list[int]:
    """How many columns each of `rounds` removals drops, spread evenly, summing to n_options - keep."""
    total = max(n_options - keep, 0)
    rounds = max(1, min(rounds, total)) if total else 1
    return [total * (r + 1) // rounds - total * r // rounds for r in range(rounds)]


def run_screen(screen: GroupLassoScreen, weights: Sequence[nn.Parameter], loss_fn: Callable[[Any], torch.Tensor],
               batches: Iterator, steps: int, arch_start: int = 0, lr: float = 0.04, momentum: float = 0.9,
               weight_decay: float = 1e-4, arch_lr: float = 4e-4, rounds: int = 4, grad_clip: float | None = 35.0,
               progress: bool = False, desc: str = "screening") -> dict[str, Any]:
    """Train weights (SGD, cosine) and alpha (Adam, from step `arch_start`) on loss + group lasso; drop gradually.

    `loss_fn(batch)` returns the task loss of the model holding `screen`'s modules.
    Returns the kept ops, the removal order and the final column norms.
    """
    w_opt = torch.optim.SGD(list(weights), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, max(steps, 1))
    a_opt = torch.optim.Adam(screen.rows, lr=arch_lr)
    arch_steps = max(steps - arch_start, 1)
    plan = removal_plan(len(screen.options), screen.keep, rounds)
    marks = {arch_start + arch_steps * (r + 1) // len(plan) - 1: n for r, n in enumerate(plan)}
    removed: list[list[str]] = []
    losses = []
    bar = tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False)
    for step in bar:
        loss = loss_fn(next(batches))
        train_alpha = step >= arch_start
        total = loss + screen.penalty() if train_alpha else loss
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(list(weights), grad_clip)
        w_opt.step()
        sched.step()
        if train_alpha:
            a_opt.step()
            screen.enforce()
        losses.append(loss.detach())  # read once at the end: no host sync per step
        if step in marks:
            removed.append(screen.drop(marks[step]))
    if len(screen.remaining()) > screen.keep:  # fewer steps than rounds: finish the removal
        removed.append(screen.drop(len(screen.remaining()) - screen.keep))
    losses = torch.stack(losses).cpu().tolist() if losses else []
    return {"kept": screen.remaining(), "removed": removed, "norms": screen.norms(), "losses": losses}


def screen_detector(space, data, mu: float = 0.1, keep: int = 8, stage_blocks: Sequence[int] = (2, 2, 4, 2),
                    components: Sequence[str] = ("backbone", "neck", "head"), steps: int = 200,
                    arch_start_fraction: float = 0.5, batch_size: int = 8, lr: float = 0.04, arch_lr: float = 4e-4,
                    rounds: int = 4, seed: int = 0, progress: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Screen each component of a `HitDetectorSpace` in turn (others fixed to their default op), on `device`.

    Returns `{"candidates": {component: [8 ops]}, "details": {component: ...}}`;
    pass `candidates` to the space (or to `HitDetSearcher`) to search the sub-spaces.
    """
    from tasks.detection.data import collate
    from tasks.detection.space import HitDetectorSpace
    from tasks.detection.task import detection_loss

    small = HitDetectorSpace(num_classes=data.num_classes, candidates={c: space.candidates[c] for c in space.candidates},
                             detector=space.detector, width=space.width, divisor=space.divisor,
                             stage_blocks=stage_blocks, fpn_channels=space.fpn_channels,
                             fc_channels=space.fc_channels, head_blocks=space.head_blocks, min_size=space.min_size,
                             max_size=space.max_size, detector_kwargs=space.detector_kwargs,
                             head_channels=space.head_channels, init=space.init)
    default = small.default()
    result: dict[str, Any] = {"candidates": {c: list(space.candidates[c]) for c in space.candidates}, "details": {}}
    for comp in components:
        torch.manual_seed(seed)
        fixed = {n: default[n] for n in small.names if small.component(n) != comp}
        model = small.supernet(num_classes=data.num_classes, fixed=fixed).to(device)
        modules = [m for m in choice_modules(model)]
        screen = GroupLassoScreen(modules, mu=mu, keep=min(keep, len(modules[0].choice.options)))
        arch_ids = {id(r) for r in screen.rows}
        weights = [p for p in model.parameters() if id(p) not in arch_ids]
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(data.train, batch_size=batch_size, shuffle=True, collate_fn=collate, generator=gen)

        def cycle(loader: DataLoader = loader) -> Iterator:
            while True:
                yield from loader

        model.train()
        started = time.perf_counter()
        def loss(batch, model=model):
            images, targets = batch
            targets = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
            return detection_loss(model, [i.to(device) for i in images], targets)[0]

        details = run_screen(screen, weights, loss, cycle(), steps,
                             arch_start=int(steps * arch_start_fraction), lr=lr, arch_lr=arch_lr, rounds=rounds,
                             progress=progress, desc=f"screening {comp}")
        details["seconds"] = time.perf_counter() - started
        result["candidates"][comp] = details["kept"]
        result["details"][comp] = details
    return result


__all__ = ["GroupLassoScreen", "linear_weights", "removal_plan", "run_screen", "screen_detector"]
