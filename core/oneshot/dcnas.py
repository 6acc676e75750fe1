"""DC-NAS: divide-and-conquer search over a one-shot supernet.

Wang, Xu, Tao. "DC-NAS: Divide-and-Conquer Neural Architecture Search",
arXiv 2005.14456 (2020). No official code. What the paper states (abstract
and Sec. 1; the method section was not available to us, see below):

1. represent every sampled sub-network "according to changes in parameters
   or output features of each layer" of the supernet;
2. compute the similarity between sampled networks from these representations;
3. cluster them with k-means and evaluate the sub-networks separately inside
   each cluster (the premise: weight-sharing evaluation is reliable between
   similar networks, unreliable between dissimilar ones);
4. merge the best architecture of each cluster and evaluate those winners to
   pick the final one.

What we do (`DCNASSearch.fit(module, data) -> Arch`, `dcnas_scores(...)`):

- **Supernet.** A SPOS supernet (`core.supernet.spos`): the `module` given
  to `fit`, a checkpoint path (`supernet:`), or trained here for `epochs`
  (resumable through `checkpoint`, which the CLI sets).
- **Samples.** `samples` distinct archs drawn uniformly by `space.sample`.
- **Representation (our reading; the paper's exact definition is not known
  here).** A fixed probe batch of `probe_size` training images (seeded) runs
  through the supernet on each sampled path, BatchNorm on the probe batch's own
  statistics (training mode, no gradients; the supernet's buffers are
  restored afterwards). For every layer, by default every `ChoiceModule` of
  the supernet plus the network output, the layer's output is pooled over
  space to one vector per probe image (`[probe_size, channels]`). The
  change of layer l for arch a is that vector minus its mean over the
  sampled archs (the feature of the "average sub-network"), and each layer's
  block is scaled to unit root-mean-square norm over the samples so that
  every layer weighs the same in the distance. A layer that does not run on
  a path (a layer beyond a stage's depth) gives zeros. The representation
  is the concatenation over layers. Similarity is the Euclidean distance
  of k-means on these vectors (`sklearn.cluster.KMeans`, `clusters` K,
  `n_init=10`, seeded). With the mobile space, the supernet runs every
  stage at its widest, so width choices do not show in the representation.
- **Evaluation inside each cluster.** Every sampled arch is scored by the
  supernet evaluator (`core.evaluation.supernet.SupernetEvaluator`: weights
  inherited, BN recalibrated on `bn_batches` training batches, accuracy on
  `data.val`); each cluster's winner is its best by the objective's fitness
  (so MACs/params constraints of the objective are honoured).
- **Merge.** The winners are evaluated thoroughly (`final`):
  `"finetune"` (default) copies the winner's path out of the supernet,
  trains it for `final_steps` SGD steps (lr `final_lr`, momentum 0.9, the
  same seeded batches for every winner), recalibrates BN on
  `final_bn_batches` batches and scores it on `data.val`; `"bn"` only
  re-scores with `final_bn_batches` recalibration batches. The final arch
  is the winner with the best thorough score (objective fitness; ties: the
  first cluster).
- **A global ranking (for benchmarks).** `dcnas_scores` also returns one
  score per sampled arch, `score(a) = thorough(winner_k) - (supernet(winner_k)
  - supernet(a))` for a in cluster k: within a cluster the supernet's
  differences are kept, between clusters the offsets come from the thorough
  evaluation of each cluster's winner (our reading of "evaluate separately in
  each cluster, then merge"). Clusters without a feasible winner keep the
  plain supernet score. Scores are in the objective's metric, signed so that
  higher is better (accuracy by default; `-val_loss` for a loss objective,
  which ranks cells on the tabular benchmark better: docs/weight_sharing.md).

Values the paper leaves open here (K, the number of samples, the thorough
evaluation) are config keys; our defaults: 100 samples, K = 5, a fine-tune
of 20 steps. The reported ImageNet search used the SPOS/ProxylessNAS-style
mobile space; the algorithm itself is space-agnostic and works on any space
with `supernet()` (cell201, mobile, DARTS through `supernet_arch`).

This is a `core.oneshot.base.Searcher`: `archforge search` calls
`search(context)`, which calls `fit(None, data)`. `history`, `result` and `report()` keep what it did.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from core.task import Task
from core.oneshot.base import Searcher
from core.engine.progress import progress_enabled
from core.engine.data import DataSplits, to_device
from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation.base import safe_evaluate
from core.evaluation.result import Result
from core.evaluation.supernet import SupernetEvaluator
from core.supernet.bn import recalibrate_bn
from core.objective import Objective
from core.api import Arch, SearchSpace, activate, choice_modules
from core.supernet.spos import SPOSTrainer, load_supernet, supernet_path

FINAL_MODES = ("finetune", "bn")


# ---------------------------------------------------------------------------------------------
# step 1: representations
# ---------------------------------------------------------------------------------------------
def probe_batch(data: DataSplits, size: int = 64, seed: int = 0, task: Task | None = None) -> torch.Tensor:
    """`size` training inputs drawn with a seeded generator (the same for every arch)."""
    loader = task.loader(data.train, size, shuffle=True, seed=seed) if task is not None else \
        DataLoader(data.train, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return next(iter(loader))[0]


def default_layers(supernet: nn.Module) -> list[str]:
    """Module paths whose outputs represent a sub-network: every ChoiceModule (in forward order) and "" (the output)."""
    ids = {id(m) for m in choice_modules(supernet)}
    return [name for name, m in supernet.named_modules() if id(m) in ids] + [""]


def _pooled(out: Any) -> torch.Tensor:
    out = out[0] if isinstance(out, tuple) else out
    out = out.detach().float()
    return out.flatten(2).mean(2) if out.dim() > 2 else out


@torch.no_grad()
def layer_features(space: SearchSpace, supernet: nn.Module, archs: Sequence[Arch], probe: torch.Tensor,
                   layers: Sequence[str] | None = None, progress: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Raw per-layer features: for each layer a [n_archs, probe_size * channels] array of pooled outputs.

    Runs `supernet` on each arch's path (`core.api.activate`) in training
    mode (BN on the probe batch's statistics), without gradients; buffers are
    restored afterwards. A layer that does not run for an arch gives zeros.
    """
    layers = list(layers) if layers is not None else default_layers(supernet)
    modules = dict(supernet.named_modules())
    missing = [p for p in layers if p not in modules]
    if missing:
        raise ConfigError(f"strategy.layers: the supernet has no modules {missing[:5]}")
    device = next(supernet.parameters()).device
    probe = probe.to(device)
    snapshot = {k: v.detach().clone() for k, v in supernet.named_buffers()}
    recorded: dict[str, torch.Tensor] = {}
    handles = [modules[p].register_forward_hook(lambda m, i, o, p=p: recorded.__setitem__(p, _pooled(o)))
               for p in layers]
    per_layer: list[list[np.ndarray | None]] = [[] for _ in layers]
    widths: list[int] = [0] * len(layers)
    was_training = supernet.training
    supernet.train()
    try:
        for arch in tqdm(archs, desc="DC-NAS features", unit="arch", disable=not progress_enabled(progress)):
            recorded.clear()
            activate(supernet, supernet_path(space, arch))
            supernet(probe)
            for k, p in enumerate(layers):
                if p in recorded:
                    vec = recorded[p].cpu().numpy().reshape(-1)
                    widths[k] = max(widths[k], vec.size)
                    per_layer[k].append(vec)
                else:
                    per_layer[k].append(None)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, value in supernet.named_buffers():
                value.copy_(snapshot[name])
        supernet.train(was_training)
    out = []
    for k, rows in enumerate(per_layer):
        block = np.zeros((len(archs), widths[k]), dtype=np.float64)
        for a, row in enumerate(rows):
            if row is not None:
                block[a, :row.size] = row
        out.append(block)
    return out, layers


def representations(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Per-layer change w.r.t. the average sub-network, each layer scaled to unit RMS norm; concatenated."""
    parts = []
    for block in blocks:
        if block.shape[1] == 0:
            continue
        change = block - block.mean(0, keepdims=True)
        rms = math.sqrt(float((change ** 2).sum(1).mean()))
        parts.append(change / rms if rms > 1e-12 else change)
    if not parts:
        raise ValueError("DC-NAS: no layer produced a feature; check strategy.layers")
    return np.concatenate(parts, axis=1)


def cluster(features: np.ndarray, clusters: int, seed: int = 0) -> np.ndarray:
    """k-means labels (scikit-learn, `n_init=10`); K is capped at the number of distinct feature rows."""
    from sklearn.cluster import KMeans

    distinct = len(np.unique(np.round(features, 10), axis=0))
    k = max(1, min(clusters, distinct))
    if k == 1:
        return np.zeros(len(features), dtype=np.int64)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(features).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# step 4: thorough evaluation of the winners
# ---------------------------------------------------------------------------------------------
def path_network(space: SearchSpace, supernet: nn.Module, arch: Arch) -> nn.Module:
    """A trainable copy of `arch`'s path: `space.inherit` where the space has it, else a copy of the
    activated supernet."""
    if callable(getattr(space, "inherit", None)):
        return space.inherit(supernet, arch)
    net = copy.deepcopy(supernet)
    activate(net, supernet_path(space, arch))
    return net


def _batches(task: Task, dataset, batch_size: int, n: int, seed: int) -> list[Any]:
    loader = task.loader(dataset, batch_size, shuffle=True, seed=seed)
    out: list = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def finetune_score(space: SearchSpace, supernet: nn.Module, arch: Arch, data: DataSplits, task: Task,
                   steps: int = 20, lr: float = 0.01, batch_size: int = 64, bn_batches: int = 8, seed: int = 0,
                   device: str | torch.device = "cpu") -> dict[str, float]:
    """Fine-tune a copy of `arch`'s path for `steps` SGD steps on the task's loss, recalibrate BN, and score it
    with the task's metrics on `data.val` (a `loss` among them reported as `val_loss`).

    Every arch sees the same seeded batches; the supernet is not modified.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = path_network(space, supernet, arch).to(device)
        if steps > 0:
            params = [p for p in net.parameters() if p.requires_grad]
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=4e-5)
            net.train()
            for batch in _batches(task, data.train, batch_size, steps, seed + 1):
                loss, _ = task.loss(net, to_device(batch, device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, 5.0)
                opt.step()
        recal = [(batch[0].to(device),) for batch in _batches(task, data.train, batch_size, bn_batches, seed + 2)]
        if recal:
            recalibrate_bn(net, recal)
        net.eval()
        scores = task.score(net, task.loader(data.val, 256))
        return {("val_loss" if k == "loss" else k): float(v) for k, v in scores.items()}


# ---------------------------------------------------------------------------------------------
# the whole estimator
# ---------------------------------------------------------------------------------------------
@dataclass
class DCNASOutcome:
    """What `dcnas_scores` found: per sampled arch its cluster, supernet result and global score."""

    archs: list[Arch]
    features: np.ndarray
    labels: np.ndarray
    results: list[Result]
    winners: dict[int, int]                      # cluster -> index into archs
    final: dict[int, Result]                     # index of a winner -> its thorough result
    best: int | None                             # index of the chosen arch
    scores: np.ndarray                           # global score per arch (objective metric, higher = better)
    layers: list[str] = field(default_factory=list)

    def clusters(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, k in enumerate(self.labels.tolist()):
            out.setdefault(int(k), []).append(i)
        return out


def dcnas_scores(space: SearchSpace, supernet: nn.Module, data: DataSplits, task: Task, archs: Sequence[Arch],
                 clusters: int = 5, seed: int = 0, probe_size: int = 64, layers: Sequence[str] | None = None,
                 bn_batches: int = 4, final: str = "finetune", final_steps: int = 20, final_lr: float = 0.01,
                 final_bn_batches: int = 8, batch_size: int = 64, objective: Objective | None = None,
                 evaluator: SupernetEvaluator | None = None, device: str = "cpu",
                 progress: bool = False) -> DCNASOutcome:
    """Run DC-NAS's represent -> cluster -> evaluate per cluster -> merge on `archs` (see the module docstring)."""
    if final not in FINAL_MODES:
        raise ConfigError(f"strategy.final: expected one of {FINAL_MODES}, got {final!r}")
    if clusters < 1:
        raise ConfigError(f"strategy.clusters: expected an integer >= 1, got {clusters!r}")
    archs = [space.check(a) for a in archs]
    if not archs:
        raise ValueError("DC-NAS: no architectures to cluster")
    objective = objective or Objective()
    evaluator = evaluator or SupernetEvaluator(space, data, task, supernet=supernet, bn_batches=bn_batches,
                                               seed=seed, device=device)
    blocks, names = layer_features(space, evaluator.supernet, archs, probe_batch(data, probe_size, seed, task), layers,
                                   progress)
    features = representations(blocks)
    labels = cluster(features, clusters, seed)

    results = [safe_evaluate(evaluator, a) for a in
               tqdm(archs, desc="DC-NAS evaluate", unit="arch", disable=not progress_enabled(progress))]
    fitness = [objective.fitness(r) for r in results]
    winners: dict[int, int] = {}
    for i, k in enumerate(labels.tolist()):
        if fitness[i] > -math.inf and (k not in winners or fitness[i] > fitness[winners[k]]):
            winners[k] = i
    winners = dict(sorted(winners.items()))

    final_results: dict[int, Result] = {}
    thorough = None
    if final == "bn":
        thorough = SupernetEvaluator(space, data, task, supernet=evaluator.supernet, bn_batches=final_bn_batches,
                                     seed=seed, device=device)
    for k, i in winners.items():
        metrics = {m: v for m, v in results[i].metrics.items() if m in ("params", "macs", "latency_ms")}
        if final == "finetune":
            metrics.update(finetune_score(space, evaluator.supernet, archs[i], data, task, final_steps, final_lr,
                                          batch_size, final_bn_batches, seed, device))
        else:
            metrics.update(thorough.score(archs[i]))
        final_results[i] = Result(metrics=metrics)
    best = None
    for k, i in winners.items():  # ties: the first cluster
        if best is None or objective.fitness(final_results[i]) > objective.fitness(final_results[best]):
            best = i

    # the global ranking, in the objective's metric signed so that higher is better (accuracy, or -val_loss)
    sign = 1.0 if objective.direction == "max" else -1.0
    scores = np.array([sign * r.get(objective.metric) for r in results], dtype=np.float64)
    for k, i in winners.items():
        offset = sign * (final_results[i].get(objective.metric) - results[i].get(objective.metric))
        scores[labels == k] += offset
    return DCNASOutcome(archs, features, labels, results, winners, final_results, best, scores, names)


# ---------------------------------------------------------------------------------------------
# the searcher
# ---------------------------------------------------------------------------------------------
@STRATEGIES.register("dcnas")
class DCNASSearch(Searcher):
    """DC-NAS (see the module docstring). `fit(module, data) -> Arch`; config keys are the arguments below.

    - supernet: `supernet` (a SPOS checkpoint path) or trained here: `epochs`,
      `train` (more `SPOSTrainer` keys: lr, batch_size, steps_per_epoch, ...),
      `supernet_kwargs` (arguments of `space.supernet()`), `checkpoint`.
    - `samples` archs, `clusters` K, `probe_size`, `layers` (module paths; None:
      every ChoiceModule and the output), `bn_batches` for the per-cluster
      evaluation; `final` ("finetune" or "bn"), `final_steps`, `final_lr`,
      `final_bn_batches` for the merge.
    """


    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 supernet: str | None = None, epochs: int = 10, train: dict | None = None,
                 supernet_kwargs: dict | None = None, samples: int = 100, clusters: int = 5, probe_size: int = 64,
                 layers: list | None = None, bn_batches: int = 4, final: str = "finetune", final_steps: int = 20,
                 final_lr: float = 0.01, final_bn_batches: int = 8, checkpoint: str | None = None,
                 progress: bool = False, device: str = "cpu", task: Task | None = None):
        self.task = task
        for key, value in (("samples", samples), ("clusters", clusters), ("probe_size", probe_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"strategy.{key}: expected an integer >= 1, got {value!r}")
        if final not in FINAL_MODES:
            raise ConfigError(f"strategy.final: expected one of {FINAL_MODES}, got {final!r}")
        if not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"strategy.epochs: expected an integer >= 0, got {epochs!r}")
        self.space, self.seed, self.objective = space, seed, objective or Objective()
        self.supernet_path, self.epochs, self.train_kwargs = supernet, epochs, dict(train or {})
        self.supernet_kwargs = dict(supernet_kwargs or {})
        self.samples, self.clusters, self.probe_size = samples, clusters, probe_size
        self.layers = list(layers) if layers else None
        self.bn_batches, self.final, self.final_steps = bn_batches, final, final_steps
        self.final_lr, self.final_bn_batches = final_lr, final_bn_batches
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.progress, self.device = progress, device
        self.supernet: nn.Module | None = None
        self.outcome: DCNASOutcome | None = None
        self.history: list[dict[str, float]] = []
        self.result: dict[str, Any] | None = None
        self.arch: Arch | None = None

    def _supernet(self, module: nn.Module | None, data: DataSplits) -> nn.Module:
        if module is not None:
            return module.to(self.device)
        if self.supernet_path:
            return load_supernet(self.space, self.supernet_path, **self.supernet_kwargs).to(self.device)
        kwargs = {"seed": self.seed, "progress": self.progress, "device": self.device, **self.train_kwargs}
        if self.supernet_kwargs:
            kwargs["supernet_kwargs"] = self.supernet_kwargs
        trainer = SPOSTrainer(self.space, data, self.task, epochs=self.epochs,
                              checkpoint=str(self.checkpoint) if self.checkpoint else None, **kwargs)
        supernet = trainer.fit()
        self.history = trainer.history
        return supernet

    def sample(self) -> list[Arch]:
        """`samples` distinct archs (fewer when the space is smaller), uniformly by `space.sample`."""
        rng = random.Random(f"{self.seed}-dcnas-samples")
        try:
            size = self.space.size()
        except (NotImplementedError, OverflowError):
            size = math.inf
        want = min(self.samples, size)
        seen: dict[Arch, None] = {}
        for _ in range(100 * self.samples):
            if len(seen) >= want:
                break
            seen.setdefault(self.space.sample(rng), None)
        return list(seen)

    def fit(self, module: nn.Module | None = None, data: DataSplits | None = None) -> Arch:
        """Train or load the supernet, sample, cluster, evaluate per cluster, merge; return the final arch."""
        if data is None:
            raise TypeError("DCNASSearch.fit: data is required")
        self.supernet = self._supernet(module, data)
        archs = self.sample()
        outcome = dcnas_scores(self.space, self.supernet, data, self.task, archs, clusters=self.clusters, seed=self.seed,
                               probe_size=self.probe_size, layers=self.layers, bn_batches=self.bn_batches,
                               final=self.final, final_steps=self.final_steps, final_lr=self.final_lr,
                               final_bn_batches=self.final_bn_batches, objective=self.objective,
                               device=self.device, progress=self.progress)
        self.outcome = outcome
        if outcome.best is None:
            raise ValueError("DC-NAS: no sampled architecture is feasible under the objective's constraints "
                             f"({', '.join(map(str, self.objective.constraints)) or 'none'}); sample more")
        self.arch = outcome.archs[outcome.best]
        self.result = {"arch": self.arch.to_dict(), "arch_key": self.arch.key,
                       "metrics": outcome.final[outcome.best].metrics, "samples": len(archs),
                       "clusters": {str(k): len(v) for k, v in outcome.clusters().items()},
                       "winners": [outcome.archs[i].key for i in outcome.winners.values()]}
        return self.arch

    def report(self) -> dict[str, Any]:
        """The supernet history, every sampled arch with its cluster and scores, the winners and the result."""
        o = self.outcome
        rows = [] if o is None else [
            {"arch": a.to_dict(), "cluster": int(o.labels[i]), "supernet": o.results[i].metrics,
             "score": float(o.scores[i]), "winner": i in o.final,
             "final": o.final[i].metrics if i in o.final else None} for i, a in enumerate(o.archs)]
        return {"history": self.history, "samples": rows, "result": self.result}


__all__ = ["DCNASSearch", "DCNASOutcome", "dcnas_scores", "layer_features", "representations", "cluster",
           "finetune_score", "path_network", "probe_batch", "default_layers"]
