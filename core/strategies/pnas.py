"""Progressive Neural Architecture Search (PNAS).

Liu, Zoph, Neumann, Shlens, Hua, Li, Fei-Fei, Yuille, Huang, Murphy.
"Progressive Neural Architecture Search", ECCV 2018 (arXiv 1712.00559),
Sec. 3 and Algorithm 1. Cells grow one block at a time: evaluate every
1-block cell (S_1); then, level by level, expand each cell of the beam
S_{b-1} by every option of block b, rank all expansions with a surrogate
fitted on every cell evaluated so far, and evaluate the top K (the new beam
S_b); the surrogate is refitted after each level. The surrogate is an
ensemble of the PNAS MLP and LSTM over block tokens
(`core.predictors.sequence`), each model trained `folds` times on (folds-1)/
folds of the data (the paper: 5 predictors, each on 4/5); predictions are
averaged. Paper settings: B = 5 blocks, K = 256, 1160 models in all.

How it maps onto this suite:

- **Blocks.** A block is an ordered group of choices (`blocks` param: a list
  whose entries are a choice-name prefix or a list of prefixes; see
  `core.predictors.sequence.resolve_blocks`). Defaults per space
  (`default_blocks`): cell201, block b = the edges into node b+1 (1, 2 and 3
  edges: `[[cell.e01], [cell.e02, cell.e12], [cell.e03, cell.e13, cell.e23]]`);
  the DARTS space, node by node (each node's two inputs and two ops, the
  paper's block), all nodes of the normal cell and then all of the reduction
  cell; any other space, one choice per block.
- **Partial cells are full archs.** Every arch of a space sets every choice,
  so a cell with b blocks decided is completed by a fixed "simplest" `fill`:
  `skip_connect` on every choice that has it as an option (an identity
  keeps the undecided part of the cell from cutting the signal, as `none`
  would), the choice's default elsewhere (DARTS inputs: the two cell inputs).
  `fill` may name another option for all choices, or give a dict
  `{choice name or prefix: option}`. The surrogate sees only the decided
  blocks (tokens of blocks 1..b), as PNAS feeds cells of b blocks.
- **Ask/tell.** `ask` hands out the archs of the current level one by one;
  when all of them have been told, the next level is prepared (surrogate
  fit, expansion, ranking). A beam member already evaluated (an expansion
  whose new block equals the fill) stays in the beam without a second query.
  A level larger than the rest of the budget simply ends with the budget.
- **After the last block** (budget left once S_B is evaluated, e.g. in
  small spaces), the search goes on in rounds: the one-block variants of the
  K best complete archs so far, ranked by the refitted surrogate, top K
  evaluated; random fresh archs only when no variant is left.
- **Level 1** evaluates every 1-block cell, as the paper, unless `initial`
  caps it (a seeded random subset).
- Failed or infeasible results enter the surrogate's data at the worst
  finite fitness seen.
- `max_candidates` caps the expansions ranked per level (a seeded random
  subset of the combinations per beam member when a block has more).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.engine.registry import STRATEGIES, ConfigError
from core.evaluation.result import Result
from core.objective import Objective
from core.predictors.sequence import BlockMLPPredictor, BlockTokenizer, LSTMPredictor
from core.api import Arch, SearchSpace
from core.strategies.base import QueuedStrategy

SURROGATES = {"mlp": BlockMLPPredictor, "lstm": LSTMPredictor}


def simplest_fill(space: SearchSpace, fill: str | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The value of every choice in a partial cell: see the module docstring."""
    values: dict[str, Any] = {}
    for c in space.choices:
        if isinstance(fill, str):
            values[c.name] = fill if fill in c.options else c.default
        else:
            values[c.name] = "skip_connect" if "skip_connect" in c.options else c.default
    if isinstance(fill, Mapping):
        for key, value in fill.items():
            hits = [c for c in space.choices if c.name == key or c.name.startswith(key)]
            if not hits:
                raise ConfigError(f"strategy.fill.{key}: matches no choice of the space")
            for c in hits:
                if value not in c.options:
                    raise ConfigError(f"strategy.fill.{key}: {value!r} is not an option of {c.name!r} "
                                      f"({list(c.options)})")
                values[c.name] = value
    elif fill is not None and not isinstance(fill, str):
        raise ConfigError(f"strategy.fill: expected an option name or a mapping, got {fill!r}")
    return values


@STRATEGIES.register("pnas")
class PNAS(QueuedStrategy):
    """Progressive NAS with a beam of `beam_size` and an MLP + LSTM surrogate ensemble.

    Args:
        beam_size: K, archs evaluated per level after the first (paper: 256).
        blocks: block grouping (list of prefixes or lists of prefixes); default per space.
        fill: completion of undecided blocks (see module docstring).
        surrogate: models of the ensemble, any of "mlp" (PNAS's MLP) and "lstm".
        folds: each model is trained `folds` times on (folds-1)/folds of the data (1: once on all).
        epochs, batch_size, lr, embedding_dim, hidden: surrogate training settings (paper: 100-d, 100 units).
        initial: cap on level-1 archs (None: all of them, as the paper).
        max_candidates: cap on expansions ranked per level.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None, beam_size: int = 16,
                 blocks: list | None = None, fill: str | dict | None = None, surrogate: list[str] | None = None,
                 folds: int = 5, epochs: int = 60, batch_size: int = 32, lr: float = 3e-3, embedding_dim: int = 100,
                 hidden: int = 100, initial: int | None = None, max_candidates: int = 20000):
        super().__init__(space, seed, objective)
        if beam_size < 1:
            raise ConfigError(f"strategy.beam_size: must be >= 1, got {beam_size}")
        if folds < 1:
            raise ConfigError(f"strategy.folds: must be >= 1, got {folds}")
        if initial is not None and initial < 1:
            raise ConfigError(f"strategy.initial: must be >= 1 or null, got {initial}")
        surrogate = list(surrogate) if surrogate is not None else ["mlp", "lstm"]
        unknown = [s for s in surrogate if s not in SURROGATES]
        if not surrogate or unknown:
            raise ConfigError(f"strategy.surrogate: expected a non-empty list of {sorted(SURROGATES)}, got {surrogate}")
        try:
            self.tokenizer = BlockTokenizer(space, blocks)
        except ValueError as err:
            raise ConfigError(f"strategy.{err}") from None
        self.blocks = self.tokenizer.blocks
        self.beam_size, self.folds, self.surrogate = beam_size, folds, surrogate
        self.train_settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, embedding_dim=embedding_dim,
                                   hidden=hidden)
        self.initial, self.max_candidates = initial, max_candidates
        self.fill = Arch(simplest_fill(space, fill))
        if self.space.constraint_error(self.fill) is not None:
            raise ConfigError(f"strategy.fill: the completion is not a valid arch: "
                              f"{self.space.constraint_error(self.fill)}")
        self.depth = 0                                   # blocks decided in the current beam
        self.levels: list[list[Arch]] = []               # the beam of each level (level k: k blocks decided)
        self.entries: list[tuple[Arch, int]] = []        # (arch, blocks decided) the surrogate learns from
        self.results: dict[Arch, float] = {}             # fitness of every told arch
        self.rounds = 0                                  # refinement rounds after the last block

    def tell(self, arch: Arch, result: Result) -> None:
        super().tell(arch, result)
        self.results[arch] = self.fitness(result)

    # -- levels ------------------------------------------------------------------------
    def refill(self) -> None:
        """Prepare the next level (or refinement round) and queue its archs not evaluated yet."""
        while not self.queue:
            if self.depth == 0:
                beam = self._level_one()
            elif self.depth < len(self.blocks):
                candidates = self._expansions(self.levels[-1], self.depth)
                beam = self._top(candidates, self.depth + 1)
            else:
                self._refine()
                return
            self.depth += 1
            self.levels.append(beam)
            self.entries += [(a, self.depth) for a in beam]
            self.queue.extend(a for a in beam if a not in self.results and a not in self.seen)

    def _level_one(self) -> list[Arch]:
        cells = self._expansions([self.fill], 0)
        if self.initial is not None and len(cells) > self.initial:
            cells = self.rng.sample(cells, self.initial)
        return cells

    def _refine(self) -> None:
        full = [a for a, d in self.entries if d == len(self.blocks) and a in self.results]
        full = sorted(dict.fromkeys(full), key=lambda a: -self.results[a])[:self.beam_size]
        candidates = [a for b in range(len(self.blocks)) for a in self._expansions(full, b)]
        candidates = [a for a in dict.fromkeys(candidates) if a not in self.seen]
        self.rounds += 1
        if candidates:
            picked = self._top(candidates, len(self.blocks))
        else:
            picked = [self.fresh(lambda: self.space.sample(self.rng)) for _ in range(self.beam_size)]
        self.entries += [(a, len(self.blocks)) for a in picked]
        self.queue.extend(picked)

    def _expansions(self, parents: Sequence[Arch], block: int) -> list[Arch]:
        """Every valid arch that sets block `block` of a parent to any combination of options (deduplicated)."""
        names = self.blocks[block]
        options = [self.space.choice(n).options for n in names]
        per_parent = math.prod(len(o) for o in options)
        cap = max(1, self.max_candidates // max(1, len(parents)))
        out: dict[Arch, None] = {}
        for parent in parents:
            if per_parent <= cap:
                combos = itertools.product(*options)
            else:
                combos = (tuple(self.rng.choice(o) for o in options) for _ in range(cap))
            for combo in combos:
                arch = parent.updated(dict(zip(names, combo)))
                if self.space.constraint_error(arch) is None:
                    out[self.space.canonical(arch)] = None
        return list(out)

    def _top(self, candidates: list[Arch], depth: int) -> list[Arch]:
        """The `beam_size` candidates the surrogate ranks highest (ties broken by candidate order)."""
        if len(candidates) <= self.beam_size:
            return candidates
        scores = self.predict(candidates, depth)
        order = np.argsort(-scores, kind="stable")[:self.beam_size]
        return [candidates[i] for i in order]

    # -- surrogate -------------------------------------------------------------------
    def predict(self, archs: Sequence[Arch], depth: int) -> np.ndarray:
        """Surrogate scores of `archs` read as cells of `depth` blocks (refits on everything told so far)."""
        data = list(dict.fromkeys((a, d) for a, d in self.entries if a in self.results))
        if not data:
            return np.array([self.rng.random() for _ in archs])
        items = [self.tokenizer(a, d) for a, d in data]
        targets = [self.results[a] for a, _ in data]
        queries = [self.tokenizer(a, depth) for a in archs]
        n = len(items)
        folds = self.folds if n >= self.folds >= 2 else 1
        order = self.rng.sample(range(n), n)
        preds = []
        for kind in self.surrogate:
            for k in range(folds):
                train = [i for j, i in enumerate(order) if folds == 1 or j % folds != k]
                model = SURROGATES[kind](tokenizer=self.tokenizer, seed=self.rng.randrange(2**31),
                                         **self.train_settings)
                model.fit([items[i] for i in train], [targets[i] for i in train])
                preds.append(model.predict(queries))
        return np.mean(preds, axis=0)
