"""ESNAC: Bayesian optimisation with a kernel learned in an LSTM embedding space of architectures.

Cao, Wang, Kitani. "Learnable Embedding Space for Efficient Neural
Architecture Compression", ICLR 2019 (arXiv 1902.00383), Sec. 3; official
code github.com/Friedrich1006/ESNAC (`kernel.py`, `compression.py`,
`acquisition.py`, `options.py`).

Embedding (Sec. 3.1). An architecture is a sequence of layer descriptors.
A bidirectional LSTM reads it; its outputs are averaged over the sequence and
L2-normalised, giving e(x). Descriptors come from the space's
`layer_descriptors(arch)` when it has one (the compression space gives the
official 10-type one-hot + [kernel, stride, padding, groups, in, out] + in/out
link offsets; the NSC space one token per block layer); any other space gets
one token per choice: the one-hot of its option (padded to the widest choice)
followed by the one-hot of its position (`choice_tokens`).

Kernel and GP (Sec. 3.1, official `kernel.py`):
    k(x_i, x_j) = exp(-||e_i - e_j||^2 / (2 alpha)),   alpha = 0.01
    mu(x)    = k^T (K + beta I)^-1 y
    sigma(x) = sqrt(k(x, x) - k^T (K + beta I)^-1 k + beta),   beta = 0.05
The LSTM is trained to maximise the leave-one-out log-likelihood
    mean_i -(0.918939 + log sigma_-i + (y_i - mu_-i)^2 / (2 sigma_-i^2))
(0.918939 = 1/2 ln 2 pi), with Adam (lr 1e-3, weight decay 5e-4) for at most
`fit_steps` (100) steps, stopping after step 5 once an exponential moving
average (weight `ema` = 0.5) of the log-likelihood is within `tol` (1e-3) of
the latest value, as the official `new_kernels`. The leave-one-out posterior
is computed in closed form from one inverse of K + beta I (Rasmussen &
Williams 2006, eq. 5.12), which equals the official per-point refits.

Multiple kernels (Sec. 3.3): every search step builds `n_kernels` (8) kernels,
each with a freshly initialised LSTM fit on a random subset of the history
(each point kept with probability `subset_prob` = 0.5). Each kernel proposes
the candidate with the largest Expected Improvement
    EI = (mu - y_best) Phi(z) + sigma phi(z),  z = (mu - y_best) / sigma,
y_best the best value in that kernel's subset, over `n_candidates` (1000)
random architectures (Sec. 3.2: random search maximises the acquisition). The
step's `n_kernels` proposals are asked one by one; the next step starts when
they are used up, so with a search batch of 1 the step sees every result of
the previous one, as in the paper's 20 steps x 8 kernels. `top(k)` gives the
k best architectures found (the paper keeps 4 for full training).

Deviations, all configurable:
- LSTM size: hidden 32, 2 layers by default (official: 64, 4) for speed.
- Observations are rescaled (`y_scaling`): "worst" (default) divides by their
  standard deviation and shifts the worst value seen to 0, the GP's prior
  mean, so alpha, beta and EI work on any metric scale while the prior stays
  pessimistic like the official prior 0 on rewards in [0, 1] (with the
  kernel this narrow, a prior at the mean makes EI favour candidates far from
  every observation, which on our benchmark are often disconnected cells);
  "standard" is the usual z-score; "none" uses raw values as the official code.
- Descriptor features are divided by their largest absolute value over the
  space's default architecture (the teacher, for compression) and 63 random
  ones (channel counts would otherwise saturate the LSTM gates).
- The search starts with `n_initial` (8) random architectures; the official
  code instead seeds every kernel with the teacher at reward 0.
- Candidates are `space.sample` draws (the paper's random compressions);
  `mutate_fraction` > 0 replaces that share of them by one-choice mutations
  of the best architectures so far (0 by default). A space with
  `all_archs()` and at most `n_candidates` archs offers every unseen arch.
- Failed or infeasible results enter the GP at the worst finite value seen.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.engine.registry import STRATEGIES
from core.evaluation.result import Result
from core.objective import Objective
from core.api import Arch, SearchSpace
from core.strategies.base import Strategy

HALF_LOG_2PI = 0.918939  # the official code's constant, 1/2 ln(2 pi)


# ---------------------------------------------------------------------------------------------
# Layer descriptors
# ---------------------------------------------------------------------------------------------
def choice_tokens(space: SearchSpace, arch: Mapping[str, Any]) -> list[list[float]]:
    """Generic descriptors: one token per choice, one-hot option (padded to the widest choice) + one-hot position."""
    width = max(len(c) for c in space.choices)
    n = len(space.choices)
    tokens = []
    for pos, c in enumerate(space.choices):
        token = [0.0] * (width + n)
        token[c.index(arch[c.name])] = 1.0
        token[width + pos] = 1.0
        tokens.append(token)
    return tokens


def layer_descriptors(space: SearchSpace, arch: Mapping[str, Any]) -> torch.Tensor:
    """[layers, features] descriptors of `arch`: the space's own `layer_descriptors` or `choice_tokens`."""
    rows = space.layer_descriptors(arch) if hasattr(space, "layer_descriptors") else choice_tokens(space, arch)
    return torch.as_tensor(rows, dtype=torch.float32)


class ArchEncoder(nn.Module):
    """Bidirectional LSTM over descriptor sequences -> mean over time -> L2 normalisation (ESNAC Sec. 3.1)."""

    def __init__(self, input_size: int, hidden_size: int = 32, num_layers: int = 2, bidirectional: bool = True):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                            batch_first=True)

    def forward(self, sequences: Sequence[torch.Tensor]) -> torch.Tensor:
        lengths = [len(s) for s in sequences]
        if min(lengths) == max(lengths):  # one length (the usual case): no packing needed
            out, _ = self.lstm(torch.stack(list(sequences)))
            mean = out.mean(1)
        else:
            padded = nn.utils.rnn.pad_sequence(list(sequences), batch_first=True)
            packed = pack_padded_sequence(padded, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            out, _ = pad_packed_sequence(out, batch_first=True)
            mean = out.sum(1) / torch.tensor(lengths, dtype=out.dtype)[:, None]
        return mean / mean.norm(dim=1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------
# Gaussian-process pieces (official kernel.py, vectorised)
# ---------------------------------------------------------------------------------------------
def rbf_kernel(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """k(e_i, e_j) = exp(-||e_i - e_j||^2 / (2 alpha)) for every row pair of a and b."""
    d2 = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)
    return torch.exp(-d2 / (2 * alpha))


def gp_posterior(train: torch.Tensor, y: torch.Tensor, query: torch.Tensor, alpha: float = 0.01,
                 beta: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std at `query` embeddings (the official `predict`, with the noise beta in sigma)."""
    A = rbf_kernel(train, train, alpha) + beta * torch.eye(len(train), dtype=train.dtype)
    k = rbf_kernel(train, query, alpha)  # [n, m]
    solved = torch.linalg.solve(A, torch.cat([y[:, None], k], 1))
    mu = k.T @ solved[:, 0]
    kqq = torch.ones(len(query), dtype=train.dtype)  # k(x, x) = 1
    var = kqq - (k * solved[:, 1:]).sum(0) + beta
    return mu, var.clamp_min(1e-12).sqrt()


def expected_improvement(mu: torch.Tensor, sigma: torch.Tensor, y_best: float) -> torch.Tensor:
    """EI for maximisation: (mu - y*) Phi(z) + sigma phi(z), z = (mu - y*) / sigma."""
    z = (mu - y_best) / sigma
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return (mu - y_best) * torch.special.ndtr(z) + sigma * pdf


def loo_posterior(embeddings: torch.Tensor, y: torch.Tensor, alpha: float = 0.01,
                  beta: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out mean and std of every point, in closed form (R&W eq. 5.12; = the official predict_ex)."""
    A = rbf_kernel(embeddings, embeddings, alpha) + beta * torch.eye(len(y), dtype=embeddings.dtype)
    inv = torch.linalg.inv(A)
    diag = torch.diagonal(inv)
    mu = y - (inv @ y) / diag
    return mu, diag.rsqrt()


def loo_log_likelihood(embeddings: torch.Tensor, y: torch.Tensor, alpha: float = 0.01,
                       beta: float = 0.05) -> torch.Tensor:
    """Mean leave-one-out Gaussian log-likelihood, the quantity the LSTM maximises (official `loss`, negated)."""
    mu, sigma = loo_posterior(embeddings, y, alpha, beta)
    return -(HALF_LOG_2PI + sigma.log() + (y - mu).pow(2) / (2 * sigma.pow(2))).mean()


Y_SCALINGS = ("worst", "standard", "none")


def scale_observations(y: torch.Tensor, how: str = "worst") -> torch.Tensor:
    """Observations as the GP sees them (its prior mean is 0).

    "worst": (y - min y) / std y, so the prior mean is the worst value seen, as
    the official code's prior 0 is the worst reward in [0, 1]; "standard":
    (y - mean) / std; "none": raw values (the official code).
    """
    if how == "none" or len(y) < 2:
        return y
    std = y.std().clamp_min(1e-12)
    return (y - (y.min() if how == "worst" else y.mean())) / std


class EmbeddingKernel:
    """One ESNAC kernel: an LSTM encoder plus the GP over a set of (descriptors, value) pairs."""

    def __init__(self, input_size: int, hidden_size: int = 32, num_layers: int = 2, alpha: float = 0.01,
                 beta: float = 0.05, lr: float = 1e-3, weight_decay: float = 5e-4, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = ArchEncoder(input_size, hidden_size, num_layers)
        self.alpha, self.beta = alpha, beta
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=lr, weight_decay=weight_decay)
        self.x: list[torch.Tensor] = []
        self.y = torch.zeros(0, dtype=torch.float64)
        self.log_likelihoods: list[float] = []

    def add(self, descriptors: Sequence[torch.Tensor], values: Sequence[float]) -> None:
        self.x.extend(descriptors)
        self.y = torch.cat([self.y, torch.as_tensor(list(values), dtype=torch.float64)])

    def embed(self, descriptors: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.encoder(descriptors).double()

    def log_likelihood(self) -> float:
        with torch.no_grad():
            return float(loo_log_likelihood(self.embed(self.x), self.y, self.alpha, self.beta))

    def fit(self, steps: int = 100, ema: float = 0.5, tol: float = 1e-3) -> list[float]:
        """Adam steps on the negative LOO log-likelihood with the official EMA stopping rule."""
        if len(self.x) < 2:
            return []
        average = 0.0
        for j in range(steps):
            self.optimizer.zero_grad()
            ll = loo_log_likelihood(self.embed(self.x), self.y, self.alpha, self.beta)
            (-ll).backward()
            self.optimizer.step()
            value = float(ll.detach())
            self.log_likelihoods.append(value)
            average = ema * value + (1 - ema) * average if j > 0 else value
            if j > 5 and abs(average - value) < tol:
                break
        return self.log_likelihoods

    def posterior(self, descriptors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return gp_posterior(self.embed(self.x), self.y, self.embed(descriptors), self.alpha, self.beta)

    def acquisition(self, descriptors: Sequence[torch.Tensor]) -> torch.Tensor:
        mu, sigma = self.posterior(descriptors)
        return expected_improvement(mu, sigma, float(self.y.max()))


# ---------------------------------------------------------------------------------------------
# The strategy
# ---------------------------------------------------------------------------------------------
@STRATEGIES.register("esnac")
class ESNAC(Strategy):
    """BO with learned LSTM-embedding kernels, several kernels per step, EI over random candidates.

    Cao, Wang, Kitani, "Learnable Embedding Space for Efficient Neural
    Architecture Compression", ICLR 2019, Sec. 3; see the module docstring for
    the formulas and the deviations from the official code.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 n_initial: int = 8, n_kernels: int = 8, subset_prob: float = 0.5, n_candidates: int = 1000,
                 mutate_fraction: float = 0.0, fit_steps: int = 100, ema: float = 0.5, tol: float = 1e-3,
                 hidden_size: int = 32, num_layers: int = 2, alpha: float = 0.01, beta: float = 0.05,
                 lr: float = 1e-3, weight_decay: float = 5e-4, y_scaling: str = "worst"):
        super().__init__(space, seed, objective)
        checks = [(n_initial >= 1, "n_initial must be >= 1"), (n_kernels >= 1, "n_kernels must be >= 1"),
                  (0 < subset_prob <= 1, "subset_prob must be in (0, 1]"),
                  (n_candidates >= 1, "n_candidates must be >= 1"),
                  (0 <= mutate_fraction <= 1, "mutate_fraction must be in [0, 1]"),
                  (fit_steps >= 0, "fit_steps must be >= 0"), (0 < ema <= 1, "ema must be in (0, 1]"),
                  (hidden_size >= 1 and num_layers >= 1, "hidden_size and num_layers must be >= 1"),
                  (alpha > 0 and beta > 0, "alpha and beta must be > 0"),
                  (y_scaling in Y_SCALINGS, f"y_scaling must be one of {Y_SCALINGS}, got {y_scaling!r}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"strategy.{message}")
        self.n_initial, self.n_kernels, self.subset_prob = n_initial, n_kernels, subset_prob
        self.n_candidates, self.mutate_fraction = n_candidates, mutate_fraction
        self.fit_steps, self.ema, self.tol = fit_steps, ema, tol
        self.hidden_size, self.num_layers, self.alpha, self.beta = hidden_size, num_layers, alpha, beta
        self.lr, self.weight_decay, self.y_scaling = lr, weight_decay, y_scaling
        self.queue: deque[Arch] = deque()
        self._descriptors: dict[Arch, torch.Tensor] = {}
        self._scale: torch.Tensor | None = None
        self.kernels: list[EmbeddingKernel] = []  # the last step's kernels (for inspection)

    # -- descriptors -----------------------------------------------------------------------------
    def descriptors(self, arch: Arch, cache: bool = True) -> torch.Tensor:
        """Scaled descriptors of `arch` (cached for the history; candidates are not kept)."""
        if self._scale is None:
            rng = random.Random(f"esnac-scale-{self.seed}")
            archs = [self.space.default()] + [self.space.sample(rng) for _ in range(63)]
            reference = torch.cat([layer_descriptors(self.space, a) for a in archs])
            self._scale = reference.abs().amax(0).clamp_min(1.0)
        d = self._descriptors.get(arch)
        if d is None:
            d = layer_descriptors(self.space, arch) / self._scale
            if cache:
                self._descriptors[arch] = d
        return d

    # -- ask ---------------------------------------------------------------------------------------
    def _observations(self) -> tuple[list[Arch], list[float]]:
        archs, values = [], []
        finite = [self.fitness(r) for _, r in self.history if math.isfinite(self.fitness(r))]
        worst = min(finite) if finite else None
        for arch, result in self.history:
            f = self.fitness(result)
            if not math.isfinite(f):
                if worst is None:
                    continue
                f = worst
            archs.append(arch)
            values.append(f)
        return archs, values

    def propose(self) -> Arch:
        archs, _ = self._observations()
        if self.asked < self.n_initial or len(archs) < 2:
            return self.fresh(lambda: self.space.sample(self.rng))
        while self.queue:
            arch = self.queue.popleft()
            if arch not in self.seen:
                self.seen.add(arch)
                return arch
        self.step()
        if self.queue:
            arch = self.queue.popleft()
            self.seen.add(arch)
            return arch
        return self.fresh(lambda: self.space.sample(self.rng))

    def candidates(self, observed: Sequence[Arch], values: Sequence[float]) -> list[Arch]:
        """`n_candidates` new archs: random samples, a `mutate_fraction` of them mutations of the best ones."""
        if hasattr(self.space, "all_archs") and self.space.size() <= self.n_candidates:
            return [a for a in self.space.all_archs() if a not in self.seen]  # a small space: every unseen arch
        ranked = [a for _, a in sorted(zip(values, range(len(observed))), reverse=True)]
        parents = [observed[i] for i in ranked[:max(1, len(ranked) // 4)]]
        out: dict[Arch, None] = {}
        misses = 0
        while len(out) < self.n_candidates and misses < 200:  # 200 draws in a row with nothing new: exhausted
            if self.mutate_fraction and self.rng.random() < self.mutate_fraction:
                arch = self.space.mutate(self.rng.choice(parents), self.rng)
            else:
                arch = self.space.sample(self.rng)
            if arch in self.seen or arch in out:
                misses += 1
            else:
                misses = 0
                out[arch] = None
        return list(out)

    def step(self) -> None:
        """One search step: fit `n_kernels` kernels on random subsets; each adds its EI maximiser to the queue."""
        archs, values = self._observations()
        y = scale_observations(torch.tensor(values, dtype=torch.float64), self.y_scaling)
        pool = self.candidates(archs, values)
        if not pool:
            return
        pool_desc = [self.descriptors(a, cache=False) for a in pool]
        taken: set[int] = set()
        self.kernels = []
        for _ in range(self.n_kernels):
            subset = [i for i in range(len(archs)) if self.rng.random() < self.subset_prob]
            if len(subset) < 2:
                subset = list(range(len(archs)))
            kernel = EmbeddingKernel(pool_desc[0].shape[1], self.hidden_size, self.num_layers, self.alpha,
                                     self.beta, self.lr, self.weight_decay, seed=self.rng.getrandbits(31))
            kernel.add([self.descriptors(archs[i]) for i in subset], [float(y[i]) for i in subset])
            kernel.fit(self.fit_steps, self.ema, self.tol)
            ei = kernel.acquisition(pool_desc)
            if taken:
                ei[list(taken)] = -math.inf
            best = int(torch.argmax(ei))
            if best in taken:  # every candidate already taken
                break
            taken.add(best)
            self.queue.append(pool[best])
            self.kernels.append(kernel)

    # -- results -------------------------------------------------------------------------------------
    def top(self, k: int = 4) -> list[tuple[Arch, Result]]:
        """The k best (arch, result) pairs so far (the paper fully trains the top 4)."""
        ranked = sorted(self.history, key=lambda item: self.fitness(item[1]), reverse=True)
        return [item for item in ranked if math.isfinite(self.fitness(item[1]))][:k]
