"""Sparsestmax (SSN, Shao et al. CVPR 2019) against direct solutions of its constrained projection.

sparsestmax(z; r) = argmin ||p - z||^2 s.t. p in simplex, ||p - 1/K|| >= r.
Two independent references: an exhaustive solution (the optimum of this
non-convex problem is sparsemax(z) when feasible, else the nearest point of
the sphere within some face of the simplex, so the best radial projection
over all faces is exact) and scipy's SLSQP from many starts.
"""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from core.api import Choice, ChoiceModule
from core.api.relax import is_sparse
from core.api.relax import RELAXATIONS, relax
from core.api.sparsestmax import max_radius, order_loss, radius_at, sparsemax, sparsestmax

torch.set_num_threads(1)


def exhaustive(z: np.ndarray, r: float) -> np.ndarray:
    """The exact projection: sparsemax if outside the ball, else the best radial projection over all faces."""
    k = len(z)
    u = np.full(k, 1 / k)
    w = sparsemax(torch.tensor(z)).numpy()
    if np.linalg.norm(w - u) >= r:
        return w
    candidates = []
    for size in range(1, k + 1):
        for face in itertools.combinations(range(k), size):
            face = list(face)
            c = np.zeros(k)
            c[face] = 1 / size
            r_face_sq = r * r - np.sum((c - u) ** 2)
            if size == 1:  # a vertex: feasible for every r <= sqrt((K-1)/K)
                candidates.append(c)
                continue
            if r_face_sq < 0:
                continue
            q = np.zeros(k)
            q[face] = z[face] - z[face].mean() + 1 / size  # z projected onto the face's affine hull
            d = q - c
            if np.linalg.norm(d) < 1e-14:
                continue
            p = c + math.sqrt(r_face_sq) * d / np.linalg.norm(d)
            if p.min() >= -1e-12:
                candidates.append(np.clip(p, 0, None))
    return min(candidates, key=lambda p: np.sum((p - z) ** 2))


def slsqp(z: np.ndarray, r: float, rng: np.random.Generator, starts: int = 8) -> np.ndarray:
    k = len(z)
    u = np.full(k, 1 / k)
    constraints = [{"type": "eq", "fun": lambda p: p.sum() - 1, "jac": lambda p: np.ones(k)},
                   {"type": "ineq", "fun": lambda p: np.sum((p - u) ** 2) - r * r, "jac": lambda p: 2 * (p - u)}]
    best = None
    for x0 in [*np.eye(k), *rng.dirichlet(np.ones(k), size=starts)]:
        res = minimize(lambda p: np.sum((p - z) ** 2), x0, jac=lambda p: 2 * (p - z), method="SLSQP",
                       bounds=[(0, 1)] * k, constraints=constraints, options={"ftol": 1e-14, "maxiter": 300})
        p = res.x
        feasible = abs(p.sum() - 1) < 1e-7 and p.min() > -1e-7 and np.sum((p - u) ** 2) >= r * r - 1e-7
        if feasible and (best is None or np.sum((p - z) ** 2) < np.sum((best - z) ** 2)):
            best = p
    return best


def random_cases(n: int, seed: int):
    rng = np.random.default_rng(seed)
    for i in range(n):
        k = int(rng.integers(2, 8))
        scale = (1e-3, 0.1, 1.0, 3.0)[i % 4]  # 1e-3: DARTS-style near-uniform logits
        yield rng.normal(size=k) * scale, float(rng.uniform(0, 1) * max_radius(k))


def test_sparsemax_is_the_simplex_projection():
    z = torch.tensor([0.3, 1.2, -0.4, 1.0], dtype=torch.float64)
    p = sparsemax(z)
    # support {1, 3}: tau = (1.2 + 1.0 - 1) / 2 = 0.6
    assert torch.allclose(p, torch.tensor([0.0, 0.6, 0.0, 0.4], dtype=torch.float64))
    assert torch.allclose(sparsestmax(z, 0.0), p)
    batch = torch.randn(5, 6)
    assert torch.allclose(sparsemax(batch, dim=0).sum(0), torch.ones(6), atol=1e-6)


def test_matches_exhaustive_solution_of_the_constrained_projection():
    worst = 0.0
    for z, r in random_cases(300, seed=0):
        ours = sparsestmax(torch.tensor(z), r).numpy()
        worst = max(worst, float(np.abs(ours - exhaustive(z, r)).max()))
        u = np.full(len(z), 1 / len(z))
        assert abs(ours.sum() - 1) < 1e-9 and ours.min() >= 0
        assert np.linalg.norm(ours - u) >= r - 1e-9
    assert worst < 1e-8, worst


def test_matches_scipy_slsqp_multistart():
    rng = np.random.default_rng(1)
    for z, r in random_cases(24, seed=2):
        ours = sparsestmax(torch.tensor(z), r).numpy()
        reference = slsqp(z, r, rng)
        # never worse than the numerical optimum, and the same point where the objective is not flat
        # (for logits ~1e-3 the objective barely changes along the sphere and SLSQP stops early)
        assert np.sum((ours - z) ** 2) <= np.sum((reference - z) ** 2) + 1e-9
        if np.abs(z).max() > 0.05:
            assert np.abs(ours - reference).max() < 1e-4, (z, r, ours, reference)


def test_float32_and_batched_rows_agree_with_float64():
    z = torch.randn(7, 5, dtype=torch.float64)
    r = 0.6 * max_radius(5)
    expected = torch.stack([sparsestmax(row, r) for row in z])
    assert torch.allclose(sparsestmax(z, r, dim=-1), expected)
    assert torch.allclose(sparsestmax(z.t(), r, dim=0).t(), expected)
    assert torch.allclose(sparsestmax(z.float(), r).double(), expected, atol=1e-5)


@pytest.mark.parametrize("k", [2, 3, 5, 8])
def test_end_of_schedule_is_one_hot_at_the_argmax(k):
    gen = torch.Generator().manual_seed(k)
    for _ in range(20):
        z = torch.randn(k, generator=gen) * 1e-3
        p = relax(z, "sparsestmax", progress=1.0)
        assert torch.equal(p, nn.functional.one_hot(z.argmax(), k).to(p.dtype))
    assert radius_at(0.0, k) == 0.0 and radius_at(1.0, k) == pytest.approx(max_radius(k))
    assert radius_at(0.5, k, end_fraction=0.5) == pytest.approx(max_radius(k))
    assert max_radius(3) == pytest.approx(math.sqrt(2 / 3))


def test_schedule_sparsifies_monotonically():
    z = torch.tensor([0.02, 0.01, -0.01, 0.015, 0.0])
    supports = [int((relax(z, "sparsestmax", progress=t) > 0).sum()) for t in np.linspace(0, 1, 21)]
    assert supports[0] == 5 and supports[-1] == 1
    assert all(a >= b for a, b in zip(supports, supports[1:])), supports


def test_equal_logits_break_ties_towards_the_first_largest():
    p = sparsestmax(torch.zeros(4), 0.5)
    u = torch.full((4,), 0.25)
    assert float((p - u).norm()) == pytest.approx(0.5)
    assert int(p.argmax()) == 0 and abs(float(p.sum()) - 1) < 1e-6


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(3)
    for k, frac in ((3, 0.3), (4, 0.5), (6, 0.7)):
        z = (torch.randn(k, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
        r = frac * max_radius(k)
        assert torch.autograd.gradcheck(lambda v: sparsestmax(v, r), (z,), eps=1e-7, atol=1e-5)
        # the radial stage is active (not plain sparsemax), so the gradient is sparsestmax's own
        assert not torch.allclose(sparsestmax(z, r), sparsemax(z))


def official_recursion(v: np.ndarray, rad: float, u_in=None) -> np.ndarray:
    """The official `utils/ssn_utils.py` recursion, in numpy (top level: support centre, radius r)."""
    w = sparsemax(torch.tensor(v)).numpy()
    if (w > 0).sum() == 1:  # the official `max(w) - min(w) == 1`, robust to rounding
        return w
    u = (w > 0) / (w > 0).sum()
    r = rad if u_in is None else math.sqrt(max(rad ** 2 - np.sum((u - u_in) ** 2), 0.0))
    d = np.linalg.norm(w - u)
    if d >= r:
        return w
    p = r * (w - u) / d + u
    return official_recursion(p, r, u) if p.min() < 0 else np.clip(p, 0, 1)


def test_support_centre_variant_reproduces_the_official_code():
    differs = 0
    for z, r in random_cases(200, seed=5):
        ours = sparsestmax(torch.tensor(z), r, center="support").numpy()
        assert np.abs(ours - official_recursion(z, r)).max() < 1e-9
        full_support = (sparsemax(torch.tensor(z)).numpy() > 0).all()
        paper = sparsestmax(torch.tensor(z), r).numpy()
        if full_support:
            assert np.abs(ours - paper).max() < 1e-12
        differs += int(np.abs(ours - paper).max() > 1e-6)
    assert differs > 0  # the official top level is stricter when sparsemax already has zeros


class Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("a zero-weight candidate ran")


def test_registered_relaxation_drives_choice_modules_and_skips_zero_paths():
    assert "sparsestmax" in RELAXATIONS and is_sparse("sparsestmax")
    module = ChoiceModule(Choice("op", ("double", "boom", "neg")),
                          [nn.Identity(), Boom(), nn.Identity()])
    with torch.no_grad():
        module.logits.copy_(torch.tensor([0.3, -1.0, 0.1]))
    x = torch.randn(2, 3)
    module.set_mixture("sparsestmax", radius=0.0)  # sparsemax: [0.6, 0, 0.4]
    assert torch.allclose(module(x), x)
    module.set_mixture("sparsestmax", progress=1.0)
    assert torch.equal(module.weights(), torch.tensor([1.0, 0.0, 0.0]))
    out = module(x)
    out.sum().backward()
    assert module.logits.grad is not None


def test_order_loss_telescopes_and_hinge_counts_inversions():
    gamma = torch.tensor([0.5, 0.2, 0.4, 0.1, 0.3], requires_grad=True)
    paths = [[0, 1, 3], [0, 2, 4]]
    tele = order_loss(gamma, paths)
    assert tele.item() == pytest.approx((0.1 - 0.5) + (0.3 - 0.5))
    assert order_loss(gamma, paths, mode="hinge").item() == pytest.approx(0.0)
    assert order_loss(gamma, [[3, 4]], mode="hinge").item() == pytest.approx(0.2)
    assert order_loss(gamma, mode="hinge").item() == pytest.approx(0.2 + 0.2)
    tele.backward()
    # minimising it raises the shallow node's weight and lowers the deep ones'
    assert gamma.grad[0] < 0 and gamma.grad[3] > 0 and gamma.grad[4] > 0
    with pytest.raises(ValueError):
        order_loss(gamma, mode="sorted")
