"""Sparsestmax: the sparse relaxation of Sparse Switchable Normalization, and its trilevel-NAS ordering term.

Shao, Meng, Li, Zhang, Li, Wang, Luo. "SSN: Learning Sparse Switchable
Normalization via SparsestMax", CVPR 2019 (arXiv 1903.03793), Sec. 3.2;
official code github.com/switchablenorms/Sparse_SwitchNorm (`utils/ssn_utils.py`,
`train_imagenet.py`).

Definition (paper, Sec. 3.2). For logits z in R^K, the simplex
Delta = {p : p >= 0, sum p = 1} and its centre u = 1/K,

    sparsestmax(z; r) = argmin_p ||p - z||^2   s.t.  p in Delta,  ||p - u||_2 >= r.

r = 0 gives sparsemax (Martins & Astudillo, ICML 2016, the projection onto
Delta); r = sqrt((K-1)/K), the distance from u to a vertex, leaves only the
vertices feasible, so the output is one-hot. Growing r during training makes
the relaxation move from a dense mixture to a single choice.

Algorithm (the paper's stages 1-4, generalised to any K by the recursion of
the official `sparsestmax(v, rad_in, u_in)`):

1. w = sparsemax(z); if w is one-hot, return it.
2. Let c be the centre of w's support face, 1[w > 0]/|supp w|. The sphere
   ||p - u_prev|| = r_prev meets the face's affine hull in the sphere around
   c of radius r' = sqrt(r_prev^2 - ||c - u_prev||^2) (c - u_prev is
   orthogonal to the face). If ||w - c|| >= r' (or r'^2 <= 0), w is feasible:
   return it.
3. Otherwise push w radially out of c onto that sphere:
   p = c + r' (w - c)/||w - c||. If p >= 0, return p.
4. Else p left the simplex: recurse from step 1 on p with (u_prev, r_prev) = (c, r').

The support shrinks strictly at each recursion (the sparsemax of a point
summing to one with a negative entry clips it), so there are at most K
levels. Every step is a differentiable torch expression of z (sparsemax
through sort/gather, the radial step through the norm); the supports and
centres are piecewise constant, so autograd gives the projection's Jacobian
almost everywhere.

Deviations from the official code, all noted:

- Top level. The official code starts the recursion with the radius r around
  the centre of sparsemax(z)'s *support* (u_in=None), so when sparsemax(z)
  already has zeros it enforces ||p - c_supp|| >= r, a stronger constraint
  than the paper's ||p - u|| >= r. By default (`center="simplex"`) we start
  from u = 1/K as the paper defines it; with that start the output is the
  exact solution of the constrained problem above (checked in
  tests/core/test_sparsestmax.py against an exhaustive face-by-face solution
  and scipy's SLSQP). `center="support"` reproduces the official top level.
- Ties. When w sits exactly on the centre (all logits equal), the radial
  direction is undefined (the official code divides by zero); we push towards
  the vertex of the largest logit, lowest index on ties. That direction carries
  no gradient.
- Radius. r above sqrt((K-1)/K) has no feasible point but the vertices; we
  clamp it there.

Radius schedule. The paper grows r during training; the official training
script sets r = iteration / total_iterations (`train_imagenet.py`, linear
from 0 to 1, applied to K = 3, which reaches one-hot at sqrt(2/3) = 0.82 of
training) and so does the trilevel-NAS derivative code (`set_rad`). Our
`progress` keyword is the fraction of training t/T; `radius_at(progress, K)`
is progress * sqrt((K-1)/K), so every choice, whatever its K, becomes one-hot
exactly at the end of the schedule; `end_fraction` < 1 reaches one-hot
earlier (0.82 reproduces the official K = 3 run), and an absolute `radius`
(the official r = t/T when set to the progress itself) is accepted too.

Sorting variant (trilevel NAS). Wu, Huang, Kumar, Sukthanker, Timofte, Van
Gool. "Trilevel Neural Architecture Search for Efficient Single Image
Super-Resolution", arXiv 2101.06658. The abstract says the method "further
introduce[s] the sorting technique to the sparsestmax relaxation for better
network-level compression" (v1: "a sorted sparsestmax activation"); the
paper's method text was not available to us, and the authors released no
code. The only code of it we found, the derivative `hanyao8/DA-NAS-SISR`
(built on the first author's AutoSR code), keeps sparsestmax itself as above
and adds, for the network-level weights gamma (one weight per node of the
network-level tree; a path lists its nodes from shallow to deep), an order
term to the search loss:

    order_loss = w * sum_paths sum_k (gamma[path[k+1]] - gamma[path[k]]),   w = 1e-5,

on the raw (pre-sparsestmax) gamma. It pushes the weights along a path to be
sorted non-increasing with depth, so that the sparsestmax projection, which
zeroes the smallest entries first, cuts the deep end of the network first.
`order_loss(gamma, paths)` implements exactly that (`mode="telescoping"`);
since that sum telescopes to gamma[last] - gamma[first] per path, we also
offer `mode="hinge"`, sum_k relu(gamma[k+1] - gamma[k]), which penalises
every inversion of the order (our addition, not in any published code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from core.api.relax import register_relaxation

_CENTERS = ("simplex", "support")


def max_radius(k: int) -> float:
    """sqrt((K-1)/K): the distance from the simplex centre to a vertex; at this radius the output is one-hot."""
    if k < 1:
        raise ValueError(f"need at least one option, got {k}")
    return math.sqrt((k - 1) / k)


def radius_at(progress: float, k: int, end_fraction: float = 1.0) -> float:
    """The linear radius schedule: 0 at progress 0, sqrt((K-1)/K) (one-hot) at progress `end_fraction` and after."""
    if not 0 < end_fraction <= 1:
        raise ValueError(f"end_fraction: expected a number in (0, 1], got {end_fraction!r}")
    return min(max(float(progress), 0.0) / end_fraction, 1.0) * max_radius(k)


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection onto the probability simplex along `dim` (Martins & Astudillo, ICML 2016, Alg. 1).

    Sort z descending, k = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}, tau = (sum_{j<=k} z_(j) - 1)/k,
    p = max(z - tau, 0). Differentiable through sort and gather.
    """
    z = z.transpose(dim, -1)
    zs, _ = torch.sort(z, dim=-1, descending=True)
    cumsum = zs.cumsum(-1) - 1
    ks = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    support = (ks * zs > cumsum).sum(-1, keepdim=True)
    tau = cumsum.gather(-1, support - 1) / support.to(z.dtype)
    return torch.clamp(z - tau, min=0).transpose(dim, -1)


def _vertex_direction(z: torch.Tensor, support: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
    """Unit vector from `center` to the vertex of the largest logit on the support (lowest index on ties)."""
    masked = torch.where(support, z.detach(), torch.full_like(z, -math.inf))
    vertex = torch.zeros_like(z)
    vertex[int(torch.argmax(masked))] = 1.0
    direction = vertex - center
    return direction / direction.norm()


def _sparsestmax_1d(z: torch.Tensor, radius: float, center: str, tol: float) -> torch.Tensor:
    k = z.shape[0]
    w = sparsemax(z)
    u_prev = torch.full_like(z, 1.0 / k)
    r_prev = min(max(float(radius), 0.0), max_radius(k))
    first = True
    while True:
        support = w.detach() > 0
        n = int(support.sum())
        if n <= 1:
            return w
        c = support.to(z.dtype) / n
        if first and center == "support":
            u_prev = c  # the official code's top level: the radius around sparsemax's support centre
        first = False
        r_sq = r_prev ** 2 - float(((c - u_prev) ** 2).sum())
        if r_sq <= 0:
            return w
        r = math.sqrt(r_sq)
        if r >= max_radius(n) - tol:
            # only the face's vertices are that far from its centre: return the vertex exactly (zero Jacobian)
            return w * 0 + _vertex_direction(z, support, c).gt(0).to(z.dtype)
        distance = float((w.detach() - c).norm())
        if distance >= r:
            return w
        if distance <= tol:
            p = c + r * _vertex_direction(z, support, c)
        else:
            p = c + r * (w - c) / (w - c).norm()
        if float(p.detach().min()) >= -tol:
            return p.clamp(0.0, 1.0)
        u_prev, r_prev = c, r
        w = sparsemax(p)


def sparsestmax(z: torch.Tensor, radius: float = 0.0, dim: int = -1, center: str = "simplex") -> torch.Tensor:
    """SSN's sparsestmax along `dim` (see the module docstring): the projection of z onto
    {p in simplex : ||p - 1/K|| >= radius}; radius 0 is sparsemax, sqrt((K-1)/K) one-hot."""
    if center not in _CENTERS:
        raise ValueError(f"sparsestmax center: expected one of {_CENTERS}, got {center!r}")
    if z.dim() == 0:
        raise ValueError("sparsestmax needs at least one dimension")
    tol = 1e-6 if z.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-12
    moved = z.transpose(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = torch.stack([_sparsestmax_1d(row, radius, center, tol) for row in rows.unbind(0)])
    return out.reshape(moved.shape).transpose(dim, -1)


def sparsestmax_weights(logits: torch.Tensor, radius: float | None = None, progress: float | None = None,
                        end_fraction: float = 1.0, center: str = "simplex") -> torch.Tensor:
    """The "sparsestmax" relaxation for `ChoiceModule.set_mixture("sparsestmax", ...)`.

    Give either an absolute `radius` or the schedule's `progress` in [0, 1]
    (radius = progress / end_fraction * sqrt((K-1)/K), one-hot from
    progress = end_fraction on); neither means radius 0, i.e. sparsemax.
    """
    if radius is not None and progress is not None:
        raise ValueError("sparsestmax: give radius or progress, not both")
    if progress is not None:
        radius = radius_at(progress, logits.shape[-1], end_fraction)
    return sparsestmax(logits, radius or 0.0, dim=-1, center=center)


def sparsemax_weights(logits: torch.Tensor) -> torch.Tensor:
    """The sparsemax relaxation (sparsestmax at radius 0)."""
    return sparsemax(logits, dim=-1)


def order_loss(gamma: torch.Tensor, paths: Sequence[Sequence[int]] | None = None, mode: str = "telescoping",
               weight: float = 1.0) -> torch.Tensor:
    """Trilevel NAS's ordering term on network-level weights (see the module docstring).

    `paths` lists, per path, the indices of its nodes in `gamma` from shallow
    to deep (default: one path over all of gamma in order). `telescoping` is
    the derivative code's sum_k (gamma[k+1] - gamma[k]); `hinge` is
    sum_k relu(gamma[k+1] - gamma[k]). Both are zero-or-negative when every
    path is sorted non-increasing and grow with the inversions.
    """
    if mode not in ("telescoping", "hinge"):
        raise ValueError(f"order_loss mode: expected 'telescoping' or 'hinge', got {mode!r}")
    flat = gamma.reshape(-1)
    paths = [list(range(flat.numel()))] if paths is None else [list(p) for p in paths]
    total = flat.new_zeros(())
    for path in paths:
        if len(path) < 2:
            continue
        values = flat[torch.as_tensor(path, device=flat.device)]
        steps = values[1:] - values[:-1]
        total = total + (steps.sum() if mode == "telescoping" else F.relu(steps).sum())
    return weight * total


register_relaxation("sparsestmax", sparsestmax_weights, sparse=True)
register_relaxation("sparsemax", sparsemax_weights, sparse=True)

__all__ = ["sparsemax", "sparsestmax", "sparsestmax_weights", "sparsemax_weights", "max_radius", "radius_at",
           "order_loss"]
