"""DNA's architecture traversal (Li et al., CVPR 2020, Sec. 3.4, step 3): the path of one candidate per block
with the lowest summed score under a cost budget, on plain numbers so it can be tested on its own."""

from __future__ import annotations

import math
from collections.abc import Sequence

from core.engine.registry import ConfigError

def constrained_traversal(levels: Sequence[Sequence[tuple[float, float]]], budget: float = math.inf,
                          fixed_cost: float = 0.0, mode: str = "exact", strict: bool = False
                          ) -> tuple[list[int], float, float] | None:
    """Pick one entry per level minimising the summed loss with `fixed_cost + summed cost <= budget`.

    `levels[i]` is block i's candidates as (loss, cost), sorted by ascending
    loss. Returns (index per level, total loss, total cost including
    `fixed_cost`) or None when nothing fits. `strict` makes the bound `<`.
    Modes: see the module docstring ("exact" or "official").
    """
    n = len(levels)
    if n == 0:
        return [], 0.0, fixed_cost
    if any(not level for level in levels):
        raise ValueError("constrained_traversal: every level needs at least one candidate")
    for level in levels:
        if any(a[0] > b[0] for a, b in zip(level, level[1:])):
            raise ValueError("constrained_traversal: each level must be sorted by ascending loss")

    def fits(cost: float, bound: float) -> bool:
        return cost < bound if strict else cost <= bound

    min_cost = [min(c for _, c in level) for level in levels]
    # prefix bounds: budget minus the cheapest completion of the later levels (process_potential.py's stageK_max)
    bounds = [budget - fixed_cost - sum(min_cost[i + 1:]) for i in range(n)]
    best: list = [math.inf, None, None]
    chosen = [0] * n

    if mode == "exact":
        min_loss_after = [sum(level[0][0] for level in levels[i + 1:]) for i in range(n)]

        def visit(i: int, loss: float, cost: float) -> None:
            for k, (l_k, c_k) in enumerate(levels[i]):
                if loss + l_k + min_loss_after[i] >= best[0]:
                    break  # sorted: every later candidate is at least as bad
                if not fits(cost + c_k, bounds[i]):
                    continue
                chosen[i] = k
                if i == n - 1:
                    best[:] = [loss + l_k, list(chosen), cost + c_k]
                    break  # the first feasible completion is the best one for this prefix
                visit(i + 1, loss + l_k, cost + c_k)

        visit(0, 0.0, 0.0)
    elif mode == "official":
        maxes = [len(level) for level in levels]

        def visit(i: int, loss: float, cost: float) -> None:
            for k in range(maxes[i]):  # the range is fixed at loop entry, as in the official nested loops
                if 0 < i < n - 1 and k >= maxes[i]:
                    if maxes[i] == 0:
                        maxes[i - 1], maxes[i] = chosen[i - 1], len(levels[i])
                    break
                if i == n - 1 and i > 0 and k >= maxes[i]:
                    break
                l_k, c_k = levels[i][k]
                chosen[i] = k
                if i < n - 1:
                    if not fits(cost + c_k, bounds[i]):
                        continue
                    visit(i + 1, loss + l_k, cost + c_k)
                elif fits(cost + c_k, bounds[i]):
                    if loss + l_k < best[0]:
                        best[:] = [loss + l_k, list(chosen), cost + c_k]
                    maxes[i] = k
                    if k == 0 and i > 0:
                        maxes[i - 1], maxes[i] = chosen[i - 1], len(levels[i])
                    break

        visit(0, 0.0, 0.0)
    else:
        raise ConfigError(f"strategy.traversal: expected 'exact' or 'official', got {mode!r}")
    if best[1] is None:
        return None
    return best[1], best[0], best[2] + fixed_cost
