"""DNA: blockwisely supervised NAS with knowledge distillation (Li et al., CVPR 2020, arXiv 1911.13053).

The supernet is cut into blocks aligned with the teacher's stages
(`core.zoo.dna.DNASpace.blockwise_supernet`). Three steps, as in the paper
(sec. 3.2-3.4) and the official code (github.com/changlin31/DNA):

1. Block training (`searching/dna/distill_train.py`, `guide_input: true`,
   `distill_last_stage: true`): block i takes the teacher's stage i-1 output
   (the image for block 0, whose stem is part of it) and learns to produce
   the teacher's stage i output under `MSELoss`; one op per layer is drawn
   uniformly at every step (single path). Blocks train independently, in
   order 0..n-1, `epochs_per_block` epochs each (official 20), Adam with
   weight decay 1e-4 and per-block lr (official [0.002, 0.005, 0.005, 0.005,
   0.005, 0.002]), lr x 0.9 per epoch. No cross-entropy anywhere.
2. Ranking (`_potential`): every path of a block
   (`itertools.product(range(ops), repeat=layers)`, 6^4 = 1296) is scored on
   `score_batches` validation batches after BatchNorm recalibration on a
   reset batch (the first training batch) by `cl_loss = mean|y_hat - y| /
   std(y)` (also recorded: `loss` = MSE and `rela_loss` = MSE / Var(y)).
3. Constrained search (`searching/process_potential.py`): each block's paths
   sorted by ascending score, the network's score the sum over blocks
   (`loss_join='sum'`), its cost (MACs or params of the searched network) the
   sum of per-layer costs plus the fixed parts; a nested traversal of the
   sorted lists with early `break` keeps the best combination under the budget.

Traversal modes: `"official"` reproduces process_potential.py's loop
generalised to any number of blocks (prefix bounds from the cheapest
completions; after a feasible completion the inner list's bound shrinks to
its index, cascading outwards when it reaches 0). That pruning is a
heuristic: a bound shrunk for one prefix stays for later prefixes, so it can
miss the optimum. `"exact"` (default) is a branch and bound over the same
sorted lists with the same early breaks, made exact by lower bounds (best
remaining losses, cheapest remaining costs): it returns the minimum-score
combination within the budget.

Deviations, all configurable or documented: the teacher runs in eval mode
(the official `_train_epoch` calls `teacher.train()`, so its BN used batch
statistics under no_grad); BN recalibration re-estimates the student's
statistics as a plain average over `recalib_batches` reset batches and then
scores in eval mode (the official leaves BN in train mode while scoring,
and also re-estimates the teacher's BN on the reset batch); the official
last block (320 -> 640) is not searched (`process_potential.py` fixes it to
MB6_3x3), here `fixed_blocks: [5]` does that and the default searches every
block; `max_paths` may score a seeded sample of a block's paths when there
are too many (default: all).

Block training and the per-block scores are DNA's blockwise distillation
(`core.distill.blockwise`), which `core.oneshot.dna_ranking` shares. It is a
`core.oneshot.base.Searcher`: `archforge search` calls `search(context)` -> `fit(None, data)` and gets the chosen `Arch`; `history`, `scores` and
`result` keep what it did, and `report()` is a JSON-able summary.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from core.task import Task
from core.oneshot.base import Searcher
from core.engine.progress import progress_enabled
from core.distill.blockwise import block_losses, guide_and_target, recalibrate, train_block
from core.distill.teachers import StagedTeacher, check_teacher_spec, load_teacher
from core.engine.data import DataSplits
from core.engine.registry import STRATEGIES, ConfigError
from core.engine.runs import load_checkpoint, save_checkpoint
from core.objective import Constraint, Objective
from core.api import Arch, activate
from core.oneshot.dna_traversal import constrained_traversal

CHECKPOINT_FORMAT = "archforge-dna-1"
#: official per-block Adam learning rates for the six-block space
OFFICIAL_LR = (0.002, 0.005, 0.005, 0.005, 0.005, 0.002)
METRICS = ("cl_loss", "loss", "rela_loss")



@dataclass
class PathScore:
    """One scored path of one block: option index per layer, its ops, scores and cost in the searched net."""

    block: int
    path: tuple[int, ...]
    ops: tuple[str, ...]
    cl_loss: float
    loss: float
    rela_loss: float
    cost: float = 0.0


# ---------------------------------------------------------------------------------------------
# BatchNorm of one path
# ---------------------------------------------------------------------------------------------
def _path_batchnorms(block: nn.Module, path: Sequence[int]) -> list[nn.modules.batchnorm._BatchNorm]:
    modules = [block.stem] + [layer.candidates[k] for layer, k in zip(block.layers, path)]
    return [m for mod in modules for m in mod.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _bn_state(bns: list) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]


def _load_bn_state(bns: list, state: list) -> None:
    for m, (mean, var, count) in zip(bns, state):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
        m.num_batches_tracked.copy_(count)


# ---------------------------------------------------------------------------------------------
# the searcher
# ---------------------------------------------------------------------------------------------
@STRATEGIES.register("dna")
class DNASearch(Searcher):
    """DNA (see the module docstring). `fit(module, data) -> Arch`; config keys are the arguments below.

    - `teacher`: a `load_teacher` spec (name, checkpoint, kwargs), or pass the
      module to `fit(..., teacher=...)`; `teacher_stages`: the module paths
      ending the teacher's stages, one per block (e.g. torchvision
      efficientnet_b7: features.2 ... features.7).
    - block training: `epochs_per_block`, `lr` (one value or one per block;
      None: the official six values for six blocks, else 0.005), `lr_decay`
      (per epoch), `weight_decay`, `batch_size`, `steps_per_epoch` (cap).
    - ranking: `score_batches`, `recalib_batches`, `metric` (cl_loss, loss,
      rela_loss), `max_paths`.
    - search: `constraint` ("macs <= 350e6" or "params <= 5e6"; None: the
      objective's macs/params constraint, else unconstrained), `input_size`
      for MACs (None: the data's), `fixed_blocks`, `traversal`.
    - `checkpoint`: a file updated after every block (trained weights,
      histories, scores); a rerun resumes after the last finished block.
    """


    def __init__(self, space, seed: int = 0, objective: Objective | None = None,
                 teacher: str | dict | None = None, teacher_stages: list | None = None,
                 epochs_per_block: int = 20, lr: float | list | None = None, lr_decay: float = 0.9,
                 weight_decay: float = 1e-4, batch_size: int = 64, steps_per_epoch: int | None = None,
                 score_batches: int = 20, recalib_batches: int = 1, metric: str = "cl_loss",
                 constraint: str | None = None, input_size: int | None = None, fixed_blocks: list = (),
                 traversal: str = "exact", max_paths: int | None = None, checkpoint: str | None = None,
                 device: str = "cpu", progress: bool = False, task: Task | None = None, log_every: int = 50):
        self.task = task
        for needed in ("blockwise_supernet", "block_choices", "cost_table", "arch_from_paths"):
            if not hasattr(space, needed):
                raise ConfigError(f"strategy.name: dna needs a blockwise space such as 'dna' or 'dna_digits'; "
                                  f"{type(space).__name__} has no {needed}()")
        if metric not in METRICS:
            raise ConfigError(f"strategy.metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        if traversal not in ("exact", "official"):
            raise ConfigError(f"strategy.traversal: expected 'exact' or 'official', got {traversal!r}")
        for key, value in (("epochs_per_block", epochs_per_block), ("batch_size", batch_size),
                           ("score_batches", score_batches), ("recalib_batches", recalib_batches)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"strategy.{key}: expected an int >= 1, got {value!r}")
        n = space.num_blocks
        if lr is None:
            lr = list(OFFICIAL_LR) if n == len(OFFICIAL_LR) else [0.005] * n
        self.lr = list(lr) if isinstance(lr, (list, tuple)) else [float(lr)] * n
        if len(self.lr) != n:
            raise ConfigError(f"strategy.lr: expected one value or {n} (one per block), got {lr!r}")
        if any(not isinstance(b, int) or not -n <= b < n for b in fixed_blocks or ()):
            raise ConfigError(f"strategy.fixed_blocks: block indices must be ints in [-{n}, {n}), got {fixed_blocks!r}")
        self.fixed_blocks = sorted({b % n for b in fixed_blocks}) if fixed_blocks else []
        self.space, self.seed, self.objective = space, seed, objective
        check_teacher_spec(teacher, "strategy.teacher")  # a bad name or kwargs fail now, not after data loading
        self.teacher_spec, self.teacher_stages = teacher, list(teacher_stages) if teacher_stages else None
        self.epochs_per_block, self.lr_decay, self.weight_decay = epochs_per_block, lr_decay, weight_decay
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.score_batches, self.recalib_batches, self.metric = score_batches, recalib_batches, metric
        self.constraint = self._constraint(constraint, objective)
        self.input_size, self.traversal, self.max_paths = input_size, traversal, max_paths
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.device, self.progress, self.log_every = torch.device(device), progress, log_every
        self.history: dict[int, list[float]] = {}
        self.scores: dict[int, list[PathScore]] = {}
        self.result: dict[str, Any] | None = None
        self.supernet: nn.Module | None = None
        self.arch: Arch | None = None
        self._generator: torch.Generator | None = None  # reseeded per block: a resumed run reshuffles alike

    def _reseed(self, tag: int) -> None:
        if self._generator is not None:
            self._generator.manual_seed(self.seed * 1009 + tag)

    @staticmethod
    def _constraint(text: str | None, objective: Objective | None) -> Constraint | None:
        if text:
            try:
                c = Constraint.parse(text)
            except ValueError as e:
                raise ConfigError(f"strategy.constraint: {e}") from None
        else:
            found = [c for c in (objective.constraints if objective else []) if c.metric in ("macs", "params")
                     and c.op in ("<=", "<")]
            if not found:
                return None
            c = found[0]
        if c.metric not in ("macs", "params") or c.op not in ("<=", "<"):
            raise ConfigError(f"strategy.constraint: DNA's traversal takes 'macs <= N' or 'params <= N', got {text!r}")
        return c

    # -- data and teacher -----------------------------------------------------------------------
    def _loaders(self, data: Any) -> tuple[DataLoader, DataLoader]:
        if isinstance(data, DataSplits):
            self._generator = torch.Generator().manual_seed(self.seed)
            train = DataLoader(data.train, batch_size=self.batch_size, shuffle=True, generator=self._generator,
                               drop_last=True)
            score = DataLoader(data.val, batch_size=self.batch_size, shuffle=False)
            return train, score
        if isinstance(data, (tuple, list)) and len(data) == 2:
            return data[0], data[1]
        if isinstance(data, DataLoader):
            return data, data
        raise TypeError("DNASearch.fit: data must be DataSplits, a DataLoader, or (train_loader, score_loader)")

    def _teacher(self, teacher: nn.Module | None) -> StagedTeacher:
        if teacher is None:
            if self.teacher_spec is None:
                raise ConfigError("strategy.teacher: missing; DNA needs a teacher, e.g. "
                                  "{name: efficientnet_b7, checkpoint: weights/b7.pth}")
            teacher = load_teacher(self.teacher_spec, key="strategy.teacher")
        if isinstance(teacher, StagedTeacher):
            staged = teacher
        else:
            stages = self.teacher_stages
            if stages is None and hasattr(teacher, "stage_paths"):
                stages = teacher.stage_paths()
            if stages is None:
                raise ConfigError("strategy.teacher_stages: missing; list the module paths that end the teacher's "
                                  f"stages, one per block ({self.space.num_blocks})")
            staged = StagedTeacher(teacher, stages)
        if len(staged) != self.space.num_blocks:
            raise ConfigError(f"strategy.teacher_stages: {len(staged)} stages for a space of "
                              f"{self.space.num_blocks} blocks; give one module path per block")
        return staged.to(self.device)

    def _check_shapes(self, teacher: StagedTeacher, supernet: nn.Module, x: torch.Tensor) -> None:
        feats = teacher(x)
        inp = x
        for i, (block, feat) in enumerate(zip(supernet.blocks, feats)):
            activate(block, self.space.block_arch(i, [0] * len(block.layers)))
            block.eval()
            with torch.no_grad():
                out = block(inp)
            if out.shape[1:] != feat.shape[1:]:
                raise ConfigError(
                    f"block {i}: the student block gives {tuple(out.shape[1:])} (channels, h, w) but teacher stage "
                    f"{teacher.stages[i]!r} gives {tuple(feat.shape[1:])}; set space.block_cfgs[{i}] out/stride or "
                    "teacher_stages so they match")
            inp = feat

    # -- step 1: block training -----------------------------------------------------------------
    def train_block(self, i: int, supernet: nn.Module, teacher: StagedTeacher, loader: DataLoader) -> list[float]:
        """Step 1 for block i (`core.distill.blockwise.train_block`); returns the mean MSE of each epoch."""
        block = supernet.blocks[i]
        n_ops = [len(layer.candidates) for layer in block.layers]
        rng = random.Random(f"{self.seed}-dna-block{i}")
        self._reseed(i + 1)
        opt = torch.optim.Adam(block.parameters(), lr=self.lr[i], weight_decay=self.weight_decay)
        steps = len(loader) if not self.steps_per_epoch else min(len(loader), self.steps_per_epoch)
        bar = tqdm(total=self.epochs_per_block * steps, desc=f"DNA block {i}", unit="step",
                   disable=not progress_enabled(self.progress), dynamic_ncols=True)

        def sample():
            return self.space.block_arch(i, [rng.randrange(k) for k in n_ops])

        def on_step(n: int) -> None:
            bar.update(1)

        epochs = train_block(block, i, teacher, loader, sample, opt, self.epochs_per_block * steps, steps,
                             self.lr_decay, self.device, on_step, self.log_every)
        losses = []
        for epoch in epochs:
            total, count = 0.0, 0
            for loss, n in epoch:
                total += loss * n
                count += n
            losses.append(total / max(count, 1))
        if losses:
            bar.set_postfix(mse=f"{losses[-1]:.4g}", refresh=False)
        bar.close()
        return losses

    # -- step 2: ranking ------------------------------------------------------------------------
    def block_paths(self, i: int) -> list[tuple[int, ...]]:
        n_ops = [len(self.space.choice(n).options) for n in self.space.block_choices(i)]
        total = math.prod(n_ops)
        if self.max_paths and total > self.max_paths:
            rng = random.Random(f"{self.seed}-dna-paths{i}")
            picked = sorted(rng.sample(range(total), self.max_paths))
            every = list(itertools.product(*(range(k) for k in n_ops)))
            return [every[p] for p in picked]
        return list(itertools.product(*(range(k) for k in n_ops)))

    @torch.no_grad()
    def score_block(self, i: int, supernet: nn.Module, teacher: StagedTeacher, recal: list[torch.Tensor],
                    loader: DataLoader, table: list[list[float]] | None = None) -> list[PathScore]:
        block = supernet.blocks[i]
        paths = self.block_paths(i)
        states = []
        for path in paths:  # BN recalibration of every path on the reset batch(es), kept per path
            activate(block, self.space.block_arch(i, path))
            bns = _path_batchnorms(block, path)
            recalibrate(block, [guide_and_target(x, t, i)[0] for x, t in recal], bns)
            states.append(_bn_state(bns))
        sums = torch.zeros(len(paths), 3, dtype=torch.float64, device=self.device)  # read once, at the end
        seen = 0
        block.eval()
        bar = tqdm(total=self.score_batches * len(paths), desc=f"DNA rank block {i}", unit="path",
                   disable=not progress_enabled(self.progress), dynamic_ncols=True)
        for b, (x, *_) in enumerate(loader):
            if b >= self.score_batches:
                break
            x = x.to(self.device)
            guide, target = guide_and_target(x, teacher(x, upto=i), i)
            std, var = target.std(), target.var()
            for k, path in enumerate(paths):
                activate(block, self.space.block_arch(i, path))
                _load_bn_state(_path_batchnorms(block, path), states[k])
                cl, mse, rela = block_losses(block(guide), target, std, var)
                sums[k, 0] += float(cl) * len(x)
                sums[k, 1] += float(mse) * len(x)
                sums[k, 2] += float(rela) * len(x)
                bar.update(1)
            seen += len(x)
        bar.close()
        if seen == 0:
            raise ValueError("DNA ranking: the score loader gave no batch")
        means = (sums / seen).cpu().tolist()
        names = self.space.block_choices(i)
        scores = []
        for path, (cl, mse, rela) in zip(paths, means):
            ops = tuple(self.space.choice(n).options[k] for n, k in zip(names, path))
            cost = sum(row[k] for row, k in zip(table, path)) if table else 0.0
            scores.append(PathScore(i, tuple(path), ops, cl, mse, rela, cost))
        return scores

    # -- step 3: search ---------------------------------------------------------------------------
    def search(self, scores: Mapping[int, Sequence[PathScore]], fixed_cost: float,
               fixed_paths: Mapping[int, tuple[int, ...]] | None = None,
               fixed_block_cost: float = 0.0) -> tuple[Arch, float, float]:
        """Traverse the sorted per-block scores under the budget; (arch, summed score, cost)."""
        searched = sorted(scores)
        levels, ordered = [], []
        for i in searched:
            ranked = sorted(scores[i], key=lambda s: (getattr(s, self.metric), s.cost))
            ordered.append(ranked)
            levels.append([(getattr(s, self.metric), s.cost) for s in ranked])
        budget = self.constraint.bound if self.constraint else math.inf
        strict = bool(self.constraint and self.constraint.op == "<")
        found = constrained_traversal(levels, budget, fixed_cost + fixed_block_cost, self.traversal, strict)
        if found is None:
            cheapest = fixed_cost + fixed_block_cost + sum(min(c for _, c in level) for level in levels)
            raise ValueError(f"DNA search: no architecture satisfies {self.constraint}; the cheapest costs "
                             f"{cheapest:.6g}")
        picks, loss, cost = found
        paths = dict(fixed_paths or {})
        for i, ranked, k in zip(searched, ordered, picks):
            paths[i] = ranked[k].path
        arch = self.space.arch_from_paths([paths[i] for i in range(self.space.num_blocks)])
        return arch, loss, cost

    # -- everything ---------------------------------------------------------------------------------
    def fit(self, module: nn.Module | None = None, data: Any = None, teacher: nn.Module | None = None) -> Arch:
        """Train every block, score every path, traverse under the constraint; return the chosen arch.

        `module`: the blockwise supernet (None: `space.blockwise_supernet()`);
        `data`: DataSplits (train for blocks and the reset batch, val for
        scores), a DataLoader, or (train_loader, score_loader); `teacher`: a
        module (with `teacher_stages`) or a `StagedTeacher`, else the
        `teacher` spec of the config.
        """
        if data is None:
            raise TypeError("DNASearch.fit: data is required")
        train_loader, score_loader = self._loaders(data)
        staged = self._teacher(teacher)
        if module is None:
            with torch.random.fork_rng(devices=[]):  # the same initial supernet for a seed, whatever ran before
                torch.manual_seed(self.seed)
                module = self.space.blockwise_supernet()
        supernet = module.to(self.device)
        self.supernet = supernet
        first = next(iter(train_loader))[0].to(self.device)
        self._check_shapes(staged, supernet, first[:2])
        input_size = self.input_size or tuple(first.shape[-2:])
        metric = self.constraint.metric if self.constraint else "macs"
        fixed_cost, table = self.space.cost_table(metric, input_size)
        recal = []
        self._reseed(0)
        for b, (x, *_) in enumerate(train_loader):  # the reset batch(es): the first training batches
            if b >= self.recalib_batches:
                break
            x = x.to(self.device)
            recal.append((x, staged(x)))
        done = self._resume(supernet)
        for i in range(self.space.num_blocks):
            changed = i not in done
            if changed:
                self.history[i] = self.train_block(i, supernet, staged, train_loader)
            if i not in self.fixed_blocks and i not in self.scores:
                self.scores[i] = self.score_block(i, supernet, staged, recal, score_loader, table[i])
                changed = True
            if changed:
                self._save(supernet, i)
        for i, scores in self.scores.items():  # costs from this run's table (a resumed run may count another size)
            for score in scores:
                score.cost = sum(row[k] for row, k in zip(table[i], score.path))
        fixed_paths = {i: tuple(0 for _ in self.space.block_choices(i)) for i in self.fixed_blocks}
        fixed_block_cost = sum(sum(row[0] for row in table[i]) for i in self.fixed_blocks)
        searched = {i: s for i, s in self.scores.items() if i not in self.fixed_blocks}
        arch, loss, cost = self.search(searched, fixed_cost, fixed_paths, fixed_block_cost)
        self.arch = arch
        self.result = {"arch": arch.to_dict(), "arch_key": arch.key, "score": loss, "metric": self.metric,
                       metric: cost, "constraint": str(self.constraint) if self.constraint else None,
                       "traversal": self.traversal, "input_size": input_size,
                       "paths": [list(p) for p in self.space.paths_of(arch)]}
        return arch

    def report(self) -> dict[str, Any]:
        """History, every path's scores (sorted by the metric) and the result, as plain JSON values."""
        return {"history": {str(i): h for i, h in self.history.items()},
                "scores": {str(i): [asdict(s) for s in sorted(v, key=lambda s: getattr(s, self.metric))]
                           for i, v in self.scores.items()},
                "result": self.result}

    # -- checkpoints ------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {"seed": self.seed, "epochs_per_block": self.epochs_per_block, "lr": self.lr,
                "batch_size": self.batch_size, "score_batches": self.score_batches,
                "recalib_batches": self.recalib_batches, "max_paths": self.max_paths,
                "blocks": [list(c) for c in self.space.block_cfgs]}

    def _save(self, supernet: nn.Module, block: int) -> None:
        if self.checkpoint is None:
            return
        save_checkpoint(self.checkpoint, {
            "format": CHECKPOINT_FORMAT, "config": self._config(), "done": sorted(self.history),
            "state_dict": supernet.state_dict(), "history": {str(k): v for k, v in self.history.items()},
            "scores": {str(k): [asdict(s) for s in v] for k, v in self.scores.items()}})

    def _resume(self, supernet: nn.Module) -> set[int]:
        if self.checkpoint is None or not self.checkpoint.is_file():
            return set()
        payload = load_checkpoint(self.checkpoint)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"strategy.checkpoint: {self.checkpoint} is not a DNA checkpoint")
        if payload["config"] != self._config():
            raise ConfigError(f"strategy.checkpoint: {self.checkpoint} was written with another configuration "
                              f"({payload['config']}); use a new file")
        supernet.load_state_dict(payload["state_dict"])
        self.history = {int(k): list(v) for k, v in payload["history"].items()}
        self.scores = {int(k): [PathScore(**{**s, "path": tuple(s["path"]), "ops": tuple(s["ops"])}) for s in v]
                       for k, v in payload["scores"].items()}
        return set(payload["done"])
