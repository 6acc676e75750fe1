"""Hit-Detector's end-to-end differentiable search of backbone, neck and head together.

Guo et al., "Hit-Detector", CVPR 2020, Sec. 3.3: every searched layer is the
softmax mixture of its candidates, x_l = sum_o softmax(alpha_l)_o * o(x_{l-1}),
with alpha, beta, gamma the architecture parameters of backbone, neck and head,
trained first order against

    Loss = L_det + lambda * (C(alpha) + C(beta) + C(gamma)),   lambda = 0.01

where C is the mixture-weighted sum of the candidates' FLOPs. The search is
the shared bilevel loop (`core.oneshot.bilevel`): weights train on one half of
the training images and architecture parameters on the other, alternating
step by step (the architecture step first, as in DARTS), the weights' SGD
cosine-annealed per step; the architecture is derived by argmax per layer. The first half of the epochs
train the weights only (`arch_start_epoch`, default `epochs // 2`), as the
paper's schedule starts alpha at epoch 6 of 12 (stated for its screening
stage; METHODS.md records no separate one for the search): until the
weights have trained, alpha's gradient carries little signal (with zero-init residual
candidates, none at all, so a FLOPs term moves alpha alone). On the shapes
benchmark a 4-epoch search with alpha from its first step derived cheaper
detectors on 5 of 5 seeds, weaker on 3, than the same search with the
weight-only half (docs/benchmarks.md, Detection).

Cost units: the paper does not state C's unit. Each candidate's MACs are
counted once at its position (torch's FlopCounterMode, MACs = FLOPs / 2) on a
`min_size` image; head ops count per RoI times the RPN's test-time proposal
count. With `cost_normalize` (default) each component's C is divided by the
sum over its layers of the largest candidate's MACs, so C lies in (0, 1] and
lambda weighs the same at any image size; with `cost_normalize: false` C is in
GMACs.

Optional screening (`screening: {...}`, `tasks.detection.screening`) first
narrows each component to 8 candidates with the group lasso, then the search
runs on those sub-spaces.

Registered as strategy `hitdet` , a `core.oneshot.base.BilevelSearcher` (`fit(None, data) -> Arch`); it checkpoints to
`checkpoint` after every epoch (with the screened sub-spaces) and resumes from it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.api import Arch, choice_modules, set_mixture
from core.cost import count_macs
from core.engine.data import DataSplits
from core.engine.progress import progress_enabled
from core.engine.registry import STRATEGIES, ConfigError
from core.engine.runs import load_checkpoint
from core.objective import Objective
from core.oneshot.bilevel import BilevelSearcher
from core.task import Task
from tasks.detection.data import collate
from tasks.detection.space import COMPONENTS, HitDetectorSpace
from tasks.detection.task import detection_loss


def candidate_costs(model: nn.Module, image_size: int, proposals: int | None = None) -> dict[str, torch.Tensor]:
    """MACs of every candidate of every ChoiceModule at its position: {choice name: tensor of N costs}.

    Input shapes are recorded with hooks during one eval forward on a blank
    image (made on the model's device, CUDA included); a head op's cost is per
    RoI times `proposals` (the RPN's test-time post-NMS count when None).
    """
    device = next(model.parameters()).device
    shapes: dict[str, tuple[int, ...]] = {}
    modules = {m.name: m for m in choice_modules(model)}

    def recorder(name: str):
        def hook(module, args):
            shapes.setdefault(name, tuple(args[0].shape))  # returns None: the inputs pass unchanged
        return hook

    hooks = [m.register_forward_pre_hook(recorder(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model([torch.zeros(3, image_size, image_size, device=device)])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if proposals is None:
        rpn = getattr(model, "rpn", None)
        proposals = int(rpn._post_nms_top_n["testing"]) if rpn is not None else 1
    costs = {}
    for name, module in modules.items():
        if name not in shapes:
            raise RuntimeError(f"candidate_costs: choice {name!r} did not run on a blank image")
        shape = shapes[name]
        is_roi = name.startswith("head.") and hasattr(model, "roi_heads")
        probe = torch.zeros((1,) + shape[1:], device=device)
        per = [count_macs(c, probe) for c in module.candidates]
        scale = proposals if is_roi else shape[0]
        costs[name] = torch.tensor([float(v) * scale for v in per])
    return costs


@STRATEGIES.register("hitdet")
class HitDetSearcher(BilevelSearcher):
    """End-to-end search of a `HitDetectorSpace` (see the module docstring). `fit(None, data) -> Arch`."""

    checkpoint_format = "archforge-hitdet-1"
    title = "Hit-Detector search"
    items = "images"
    warmup_key = "arch_start_epoch"
    scheduler_interval = "step"
    weight_batch_first = False
    collate = staticmethod(collate)

    def __init__(self, space: HitDetectorSpace, seed: int = 0, objective: Objective | None = None, epochs: int = 12,
                 batch_size: int = 8, steps_per_epoch: int | None = None, train_portion: float = 0.5,
                 lr: float = 0.02, momentum: float = 0.9, weight_decay: float = 1e-4, grad_clip: float | None = 35.0,
                 arch_lr: float = 4e-4, arch_betas: tuple[float, float] = (0.5, 0.999), arch_weight_decay: float = 0.0,
                 arch_start_epoch: int | None = None, flops_lambda: float = 0.01, cost_normalize: bool = True,
                 screening: dict | None = None, checkpoint: str | None = None, progress: bool = False,
                 device: str = "cpu", task: Task | None = None):
        if not isinstance(space, HitDetectorSpace):
            raise ConfigError(f"strategy: hitdet searches a hitdet space, got {type(space).__name__}")
        if arch_start_epoch is None and isinstance(epochs, int):
            arch_start_epoch = epochs // 2  # the paper's schedule: alpha trains in the second half (6-12 of 12)
        if flops_lambda < 0:
            raise ConfigError(f"strategy.flops_lambda: expected >= 0, got {flops_lambda!r}")
        super().__init__(space, seed=seed, objective=objective, epochs=epochs, batch_size=batch_size,
                         steps_per_epoch=steps_per_epoch, train_portion=train_portion, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, grad_clip=grad_clip, arch_lr=arch_lr, arch_betas=arch_betas,
                         arch_weight_decay=arch_weight_decay, warmup_epochs=arch_start_epoch,
                         relaxation="softmax", checkpoint=checkpoint, progress=progress, device=device, task=task)
        self.flops_lambda, self.cost_normalize = flops_lambda, cost_normalize
        self.screening = dict(screening) if screening else None
        self.screened: dict[str, list[str]] | None = None
        self._costs: dict[str, tuple[str, torch.Tensor]] = {}

    @property
    def arch_start_epoch(self) -> int:
        """The first epoch with architecture steps (the weight-only epochs before it are the warm-up)."""
        return self.warmup_epochs

    # -- cost term ----------------------------------------------------------------------------------
    def _prepare_costs(self, model: nn.Module) -> None:
        raw = candidate_costs(model, self.space.min_size)
        by_comp: dict[str, float] = {c: 0.0 for c in COMPONENTS}
        for name, c in raw.items():
            by_comp[self.space.component(name)] += float(c.max())
        self._costs = {}
        for name, c in raw.items():
            comp = self.space.component(name)
            unit = by_comp[comp] if self.cost_normalize else 1e9
            self._costs[name] = (comp, c / max(unit, 1e-12))

    def cost(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """C(alpha), C(beta), C(gamma): the softmax-weighted candidate costs, summed per component."""
        device = next(model.parameters()).device
        out = {c: torch.zeros((), device=device) for c in COMPONENTS}
        seen: set[str] = set()
        for m in choice_modules(model):
            if m.name in seen:  # RetinaNet's two subnets share one choice (and its logits)
                continue
            seen.add(m.name)
            comp, costs = self._costs[m.name]
            out[comp] = out[comp] + (F.softmax(m.logits, -1) * costs.to(m.logits)).sum()
        return out

    # -- the bilevel loop's pieces ---------------------------------------------------------------------
    def prepare(self, data: DataSplits) -> None:
        if self.screening and self.screened is None:
            self._screen(data)

    def build_supernet(self, data: DataSplits) -> nn.Module:
        return self.space.supernet(num_classes=data.num_classes, candidates=self.screened)

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        set_mixture(model, "softmax")
        self._prepare_costs(model)

    def weight_scheduler(self, optimizer, steps):
        """Cosine annealing over every step of the search, stepped per weight step."""
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs * steps)

    def weight_loss(self, model: nn.Module, batch: Any, warmup: bool) -> tuple[torch.Tensor, dict[str, float]]:
        images, targets = batch
        loss, _ = detection_loss(model, images, targets)
        return loss, {"loss": loss.detach()}  # summed on the device by the bilevel loop

    def arch_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """L_det + lambda * (C_b + C_n + C_h)."""
        images, targets = batch
        det, _ = detection_loss(model, images, targets)
        cost = sum(self.cost(model).values())
        loss = det + self.flops_lambda * cost
        return loss, {"arch_loss": loss.detach(), "cost": cost.detach()}

    def epoch_summary(self, model: nn.Module, epoch: int, sums: dict[str, float], steps: int,
                      warmup: bool) -> dict[str, Any]:
        n = max(steps, 1)
        return {"train_loss": sums.get("loss", 0.0) / n, "arch_loss": sums.get("arch_loss", 0.0) / n,
                "cost": sums.get("cost", 0.0) / n}

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"screened": self.screened}

    def _screen(self, data: DataSplits) -> None:
        from tasks.detection.screening import screen_detector

        if self.checkpoint and self.checkpoint.is_file():  # a resumed search keeps its screened sub-spaces
            payload = load_checkpoint(self.checkpoint)
            if payload.get("screened"):
                self.screened = {k: list(v) for k, v in payload["screened"].items()}
                return
        from core.engine.registry import check_kwargs

        kwargs = check_kwargs(screen_detector, self.screening, "strategy.screening")
        for reserved in ("space", "data"):
            if reserved in kwargs:
                raise ConfigError(f"strategy.screening.{reserved}: set by the searcher, not in the config")
        kwargs.setdefault("seed", self.seed)
        kwargs.setdefault("progress", progress_enabled(self.progress))
        result = screen_detector(self.space, data, **kwargs)
        self.screened = result["candidates"]
        self.screening_report = {c: {"kept": d["kept"], "removed": d["removed"], "seconds": d["seconds"]}
                                 for c, d in result["details"].items()}

    # -- derivation -----------------------------------------------------------------------------------
    def derive(self, supernet: nn.Module | None = None) -> Arch:
        """Argmax of every layer's logits; positions the supernet pinned keep the space's defaults."""
        supernet = supernet if supernet is not None else self.supernet
        if supernet is None:
            raise RuntimeError("derive: no supernet; call fit() first")
        values = dict(self.space.default())
        for m in choice_modules(supernet):
            values[m.name] = m.derive()
        return self.space.check(Arch(values))

    def alphas(self) -> dict[str, list[float]]:
        if self.supernet is None:
            return {}
        return {m.name: [round(float(v), 4) for v in F.softmax(m.logits.detach(), -1)]
                for m in choice_modules(self.supernet)}

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"alphas": self.alphas()}
        if self.screened:
            out["screened"] = self.screened
            if getattr(self, "screening_report", None):
                out["screening"] = self.screening_report
        return out


__all__ = ["HitDetSearcher", "candidate_costs"]
