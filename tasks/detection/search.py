"""Hit-Detector's end-to-end differentiable search of backbone, neck and head together.

Guo et al., "Hit-Detector", CVPR 2020, Sec. 3.3: every searched layer is the
softmax mixture of its candidates, x_l = sum_o softmax(alpha_l)_o * o(x_{l-1}),
with alpha, beta, gamma the architecture parameters of backbone, neck and head,
trained first order against

    Loss = L_det + lambda * (C(alpha) + C(beta) + C(gamma)),   lambda = 0.01

where C is the mixture-weighted sum of the candidates' FLOPs. Weights train on
one half of the training set and architecture parameters on the other,
alternating step by step (the architecture step first, as in DARTS); the
architecture is derived by argmax per layer. The first half of the epochs
train the weights only (`arch_start_epoch`, default `epochs // 2`), as the
paper's schedule starts alpha at epoch 6 of 12 (stated for its screening
stage; METHODS.md records no separate one for the search): until the
weights have trained, alpha's gradient carries little signal (with zero-init residual
candidates, none at all, so a FLOPs term moves alpha alone). On the shapes
benchmark a 4-epoch search with alpha from its first step derived cheaper
detectors on 5 of 5 seeds, weaker on 3, than the same search with the
weight-only half (docs/benchmarks.md, issue 6, seventh session).

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

Registered as strategy `hitdet` (`gradient_based = True`, `fit(None, data) -> Arch`);
it checkpoints to `checkpoint` after every epoch and resumes from it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from core.cost import count_macs
from core.engine.data import DataSplits, cycle, split_indices
from core.engine.meter import StepMeter
from core.engine.registry import STRATEGIES, ConfigError
from core.engine.runs import load_checkpoint, resume_epoch_state, save_epoch_state
from core.objective import Objective
from core.space import (
    Arch,
    architecture_parameters,
    choice_modules,
    set_mixture,
)
from core.strategies.spos import _progress_enabled
from tasks.detection.data import collate
from tasks.detection.spaces import COMPONENTS, HitDetectorSpace
from tasks.detection.task import detection_loss

CHECKPOINT_FORMAT = "archforge-hitdet-1"


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
class HitDetSearcher:
    """End-to-end search of a `HitDetectorSpace` (see the module docstring). `fit(None, data) -> Arch`."""

    gradient_based = True

    def __init__(self, space: HitDetectorSpace, seed: int = 0, objective: Objective | None = None, epochs: int = 12,
                 batch_size: int = 8, steps_per_epoch: int | None = None, train_portion: float = 0.5,
                 lr: float = 0.02, momentum: float = 0.9, weight_decay: float = 1e-4, grad_clip: float | None = 35.0,
                 arch_lr: float = 4e-4, arch_betas: tuple[float, float] = (0.5, 0.999), arch_weight_decay: float = 0.0,
                 arch_start_epoch: int | None = None, flops_lambda: float = 0.01, cost_normalize: bool = True,
                 screening: dict | None = None, checkpoint: str | None = None, progress: bool = False,
                 device: str = "cpu", log_every: int = 50):
        if not isinstance(space, HitDetectorSpace):
            raise ConfigError(f"strategy: hitdet searches a hitdet space, got {type(space).__name__}")
        if not 0 < train_portion < 1:
            raise ConfigError(f"strategy.train_portion: expected a fraction in (0, 1), got {train_portion!r}")
        if epochs < 1:
            raise ConfigError(f"strategy.epochs: expected an integer >= 1, got {epochs!r}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ConfigError(f"strategy.steps_per_epoch: expected >= 1 or null, got {steps_per_epoch!r}")
        if arch_start_epoch is None:  # the paper's schedule: alpha trains in the second half (epochs 6-12 of 12)
            arch_start_epoch = epochs // 2
        if not 0 <= arch_start_epoch < epochs:
            raise ConfigError(f"strategy.arch_start_epoch: expected 0 <= arch_start_epoch < epochs ({epochs}), got "
                              f"{arch_start_epoch!r} (alpha would never train)")
        if flops_lambda < 0:
            raise ConfigError(f"strategy.flops_lambda: expected >= 0, got {flops_lambda!r}")
        self.space, self.seed, self.objective = space, seed, objective
        self.epochs, self.batch_size, self.steps_per_epoch = epochs, batch_size, steps_per_epoch
        self.train_portion = train_portion
        self.lr, self.momentum, self.weight_decay, self.grad_clip = lr, momentum, weight_decay, grad_clip
        self.arch_lr, self.arch_betas, self.arch_weight_decay = arch_lr, tuple(arch_betas), arch_weight_decay
        self.arch_start_epoch = arch_start_epoch
        self.flops_lambda, self.cost_normalize = flops_lambda, cost_normalize
        self.screening = dict(screening) if screening else None
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.device, self.log_every = progress, torch.device(device), log_every
        self.history: list[dict[str, Any]] = []
        self.screened: dict[str, list[str]] | None = None
        self.supernet: nn.Module | None = None
        self.arch: Arch | None = None
        self._costs: dict[str, tuple[str, torch.Tensor]] = {}

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

    # -- data ---------------------------------------------------------------------------------------
    def _halves(self, data: DataSplits) -> tuple[Subset, Subset]:
        first, second = split_indices(len(data.train), self.train_portion, self.seed, "images")
        return Subset(data.train, first), Subset(data.train, second)

    # -- search ---------------------------------------------------------------------------------------
    def fit(self, module: nn.Module | None, data: DataSplits) -> Arch:
        if self.screening and self.screened is None:
            self._screen(data)
        if module is None:
            torch.manual_seed(self.seed)
            module = self.space.supernet(num_classes=data.num_classes, candidates=self.screened)
        model = module.to(self.device)
        if not choice_modules(model):
            raise ValueError(f"{type(model).__name__} has no ChoiceModule: nothing to search")
        self.supernet = model
        set_mixture(model, "softmax")
        alphas = architecture_parameters(model)
        alpha_ids = {id(a) for a in alphas}
        weights = [p for p in model.parameters() if id(p) not in alpha_ids and p.requires_grad]
        self._prepare_costs(model)
        w_opt = torch.optim.SGD(weights, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        a_opt = torch.optim.Adam(alphas, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay)
        train_half, val_half = self._halves(data)
        steps = math.ceil(len(train_half) / self.batch_size)
        steps = min(steps, self.steps_per_epoch) if self.steps_per_epoch else steps
        self.epoch_steps = steps  # steps_per_epoch caps an epoch; one pass over the weight half is the most
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, self.epochs * steps)
        start_epoch, history, _ = resume_epoch_state(
            self.checkpoint, CHECKPOINT_FORMAT, self.space, "Hit-Detector search", self.epochs,
            state_dict=model, w_opt=w_opt, a_opt=a_opt, scheduler=scheduler)
        self.history = history or self.history
        bar = tqdm(total=self.epochs * steps, initial=start_epoch * steps, desc="Hit-Detector search", unit="step",
                   disable=not _progress_enabled(self.progress), dynamic_ncols=True)
        for epoch in range(start_epoch, self.epochs):
            row = self._epoch(model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, scheduler,
                              bar)
            self.history.append(row)
            if self.checkpoint:
                save_epoch_state(self.checkpoint, CHECKPOINT_FORMAT, self.space, epoch + 1, self.history,
                                 {"screened": self.screened}, state_dict=model, w_opt=w_opt, a_opt=a_opt,
                                 scheduler=scheduler)
        bar.close()
        model.eval()
        self.arch = self.derive(model)
        return self.arch

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
        kwargs.setdefault("progress", _progress_enabled(self.progress))
        kwargs.setdefault("device", str(self.device))
        result = screen_detector(self.space, data, **kwargs)
        self.screened = result["candidates"]
        self.screening_report = {c: {"kept": d["kept"], "removed": d["removed"], "seconds": d["seconds"]}
                                 for c, d in result["details"].items()}

    def _epoch(self, model, epoch, steps, train_half, val_half, alphas, weights, w_opt, a_opt, scheduler, bar):
        seed = self.seed * 1_000_003 + epoch
        torch.manual_seed(seed)
        train_batches = cycle(DataLoader(train_half, batch_size=self.batch_size, shuffle=True, collate_fn=collate,
                                          generator=torch.Generator().manual_seed(seed)))
        val_batches = cycle(DataLoader(val_half, batch_size=self.batch_size, shuffle=True, collate_fn=collate,
                                        generator=torch.Generator().manual_seed(seed + 1)))
        model.train()
        started = time.perf_counter()
        meter = StepMeter("Hit-Detector search loss", self.log_every)
        search_arch = epoch >= self.arch_start_epoch
        for step in range(steps):
            if search_arch:  # architecture step on the other half: L_det + lambda * (C_b + C_n + C_h)
                images, targets = next(val_batches)
                det, _ = detection_loss(model, [i.to(self.device) for i in images], _to(targets, self.device))
                cost = sum(self.cost(model).values())
                arch_loss = det + self.flops_lambda * cost
                a_opt.zero_grad(set_to_none=True)
                grads = torch.autograd.grad(arch_loss, alphas, allow_unused=True)
                for a, g in zip(alphas, grads):
                    a.grad = torch.zeros_like(a) if g is None else g
                a_opt.step()
                meter.add(arch_loss=arch_loss, cost=cost)
            images, targets = next(train_batches)
            loss, _ = detection_loss(model, [i.to(self.device) for i in images], _to(targets, self.device))
            w_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=weights)
            if self.grad_clip:
                nn.utils.clip_grad_norm_(weights, self.grad_clip)
            w_opt.step()
            scheduler.step()
            meter.add(loss=loss)
            meter.step(f"of epoch {epoch}")
            bar.update(1)
        sums = meter.totals(f"of epoch {epoch}")
        n = max(steps, 1)
        return {"epoch": epoch, "train_loss": sums.get("loss", 0.0) / n, "arch_loss": sums.get("arch_loss", 0.0) / n,
                "cost": sums.get("cost", 0.0) / n, "lr": w_opt.param_groups[0]["lr"],
                "seconds": time.perf_counter() - started, "arch": self.derive(model).to_dict()}

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


def _to(targets, device):
    return [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]


__all__ = ["HitDetSearcher", "candidate_costs"]
