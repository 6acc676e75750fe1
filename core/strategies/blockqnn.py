"""BlockQNN: a tabular Q-learning agent that writes an architecture one decision at a time.

Zhong, Yan, Wu, Shao, Liu. "Practical Block-wise Neural Network Architecture
Generation", CVPR 2018 (arXiv 1708.05552), Sec. 3.2-3.3; the agent follows
MetaQNN (Baker et al., ICLR 2017), on which BlockQNN builds.

An episode is a sequence of decisions. On `NSCSpace` (`core.zoo.nsc`) the
agent writes the block layer by layer: the state is the previous layer's
code (index, type, kernel, pred1, pred2), the action the next layer's code,
and a `terminal` ends the block (Sec. 3.2). On any other `SearchSpace` the
episode walks the space's choices in order and the action is the option of
the current choice; the state is (position, option of the previous choice)
(`state: previous`, the analogue of "the previous layer's code") or
(position, every option so far) (`state: history`, a search tree).

Learning (Sec. 3.2, eq. 2-3):
- epsilon-greedy actions; epsilon follows a staircase from 1.0 down to 0.1
  (`epsilon_schedule`, pairs [epsilon, episodes]); the default is the shape
  of the paper's schedule (95, 7, 7, 7, 10, 10, 10, 10, 10, 12 iterations at
  epsilon 1.0, 0.9, ..., 0.1, as we read its table; METHODS.md marks the
  counts unverified) rescaled to `schedule_episodes` episodes; after the
  staircase epsilon stays at its last value;
- Q(s, a) <- (1 - alpha) Q(s, a) + alpha [r + gamma max_a' Q(s', a')] with
  alpha = 0.01 and gamma = 1 (the paper's and the unofficial code's values),
  applied backwards over an episode's transitions; the last transition's
  target is the episode reward r_T alone;
- reward shaping: every intermediate transition gets r_t = r_T / T, T the
  episode's number of steps, so early decisions get credit before the
  bootstrapped values have propagated;
- experience replay: each told episode is stored; after it is learned,
  `replay_batch` stored episodes drawn uniformly (with replacement) are
  learned again (MetaQNN's practice);
- the episode reward is the early-stop reward of Sec. 3.3:
  r_T = fitness - mu * log(FLOPs / flops_ref) - rho * log(density / density_ref),
  fitness from the objective (an early-stopped accuracy under a short proxy
  evaluator), FLOPs from the result's `flops` metric or 2 x `macs`, density
  from the result's `density` metric or the space's `density(arch)`.

Choices we made, with their reasons:
- mu = rho = 0 by default, so the agent optimises the objective as given.
  The unofficial Keras code (METHODS.md 1.10) used u = 1, r = 8 on
  log(FLOPs / 5) and log(density / 5); with accuracies in percent that is
  mu = 0.01, rho = 0.08 for accuracies in [0, 1], the values the docs
  suggest; flops_ref = density_ref = 5 follow that code.
- Q values start at `q_init` = 0.5 (MetaQNN's initial Q for accuracies in
  [0, 1]).
- Failed or infeasible candidates (fitness -inf) get the worst finite reward
  seen so far (0 before any), so they teach the agent without breaking it.
- Proposals avoid repeats through `Strategy.fresh` (up to 100 new episodes);
  the episode learned is the one read back from the canonical arch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from typing import Any

from core.engine.registry import STRATEGIES
from core.evaluation.result import Result
from core.objective import Objective
from core.api import Arch, SearchSpace
from core.strategies.base import Strategy

PAPER_SCHEDULE = ((1.0, 95), (0.9, 7), (0.8, 7), (0.7, 7), (0.6, 10), (0.5, 10), (0.4, 10), (0.3, 10),
                  (0.2, 10), (0.1, 12))
"""(epsilon, iterations) of BlockQNN's staircase; each paper iteration sampled 64 blocks."""


def scaled_schedule(episodes: int, shape: Sequence[tuple[float, int]] = PAPER_SCHEDULE) -> list[tuple[float, int]]:
    """`shape` rescaled to `episodes` episodes in all (each step keeps at least one episode)."""
    if episodes < len(shape):
        raise ValueError(f"strategy.schedule_episodes must be >= {len(shape)}, got {episodes}")
    total = sum(n for _, n in shape)
    counts = [max(1, int(round(n * episodes / total))) for _, n in shape]
    counts[0] += episodes - sum(counts)  # rounding goes to the random phase
    if counts[0] < 1:
        raise ValueError(f"strategy.schedule_episodes = {episodes} is too small for the schedule")
    return [(eps, n) for (eps, _), n in zip(shape, counts)]


def epsilon_at(schedule: Sequence[tuple[float, int]], episode: int) -> float:
    """Epsilon of the 0-based `episode` under a staircase schedule (the last value holds afterwards)."""
    seen = 0
    for eps, n in schedule:
        seen += n
        if episode < seen:
            return float(eps)
    return float(schedule[-1][0])


# ---------------------------------------------------------------------------------------------
# Episodes: how decisions map to architectures
# ---------------------------------------------------------------------------------------------
class ChoiceEpisodes:
    """Any SearchSpace as a sequence of decisions: one per choice, in the space's order."""

    def __init__(self, space: SearchSpace, state: str = "previous"):
        if state not in ("previous", "history"):
            raise ValueError(f"strategy.state: expected 'previous' or 'history', got {state!r}")
        self.space, self.mode = space, state

    def done(self, prefix: Sequence[Any]) -> bool:
        return len(prefix) == len(self.space.choices)

    def state(self, prefix: Sequence[Any]) -> Hashable:
        if self.mode == "history":
            return (len(prefix), tuple(prefix))
        return (len(prefix), prefix[-1] if prefix else None)

    def actions(self, prefix: Sequence[Any]) -> list[Any]:
        return list(range(len(self.space.choices[len(prefix)])))

    def to_arch(self, prefix: Sequence[Any]) -> Arch | None:
        arch = self.space.from_indices(prefix)
        if self.space.constraint_error(arch) is not None:
            return None
        return self.space.canonical(arch)

    def episode(self, arch: Arch) -> list[Any]:
        return self.space.indices(arch)


class NSCEpisodes:
    """BlockQNN's own episodes on NSCSpace: state = previous layer's code, action = next layer's code."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def done(self, prefix: Sequence[Any]) -> bool:
        return bool(prefix) and prefix[-1][0] == "terminal" or len(prefix) == self.space.max_layers

    def state(self, prefix: Sequence[Any]) -> Hashable:
        return (len(prefix), *prefix[-1]) if prefix else (0, "input", 0, 0, 0)

    def actions(self, prefix: Sequence[Any]) -> list[Any]:
        return self.space.layer_actions(len(prefix) + 1)

    def to_arch(self, prefix: Sequence[Any]) -> Arch | None:
        return self.space.from_codes(prefix)

    def episode(self, arch: Arch) -> list[Any]:
        return self.space.codes(arch)


def episodes_for(space: SearchSpace, state: str = "previous"):
    """NSC grammar where the space has one (`layer_actions`, `codes`, `from_codes`), else one decision per choice."""
    if all(hasattr(space, name) for name in ("layer_actions", "codes", "from_codes", "max_layers")):
        return NSCEpisodes(space)
    return ChoiceEpisodes(space, state)


# ---------------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------------
@STRATEGIES.register("blockqnn")
class BlockQNN(Strategy):
    """Tabular Q-learning with epsilon-greedy exploration, reward shaping and experience replay.

    Zhong et al., "Practical Block-wise Neural Network Architecture Generation",
    CVPR 2018, Sec. 3.2-3.3. See the module docstring for the details and the
    choices made where the paper is silent.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, objective: Objective | None = None,
                 learning_rate: float = 0.01, discount: float = 1.0, q_init: float = 0.5,
                 epsilon_schedule: list[list[float]] | None = None, schedule_episodes: int = 178,
                 replay_batch: int = 100, reward_shaping: bool = True, mu: float = 0.0, rho: float = 0.0,
                 flops_ref: float = 5.0, density_ref: float = 5.0, state: str = "previous"):
        super().__init__(space, seed, objective)
        if not 0 < learning_rate <= 1:
            raise ValueError(f"strategy.learning_rate must be in (0, 1], got {learning_rate}")
        if not 0 <= discount <= 1:
            raise ValueError(f"strategy.discount must be in [0, 1], got {discount}")
        if replay_batch < 0:
            raise ValueError(f"strategy.replay_batch must be >= 0, got {replay_batch}")
        if flops_ref <= 0 or density_ref <= 0:
            raise ValueError("strategy.flops_ref and strategy.density_ref must be > 0")
        if epsilon_schedule is None:
            self.schedule = scaled_schedule(schedule_episodes)
        else:
            try:
                self.schedule = [(float(e), int(n)) for e, n in epsilon_schedule]
            except (TypeError, ValueError):
                raise ValueError(f"strategy.epsilon_schedule: expected a list of [epsilon, episodes] pairs, "
                                 f"got {epsilon_schedule!r}") from None
            if not self.schedule or any(not 0 <= e <= 1 or n < 0 for e, n in self.schedule):
                raise ValueError(f"strategy.epsilon_schedule: epsilons must be in [0, 1] and episodes >= 0, "
                                 f"got {epsilon_schedule!r}")
        self.alpha, self.gamma, self.q_init = learning_rate, discount, q_init
        self.replay_batch, self.reward_shaping = replay_batch, reward_shaping
        self.mu, self.rho, self.flops_ref, self.density_ref = mu, rho, flops_ref, density_ref
        self.env = episodes_for(space, state)
        self.q: dict[Hashable, dict[Any, float]] = {}
        self.memory: list[tuple[list[tuple[Hashable, Any, Hashable | None, list[Any]]], float]] = []
        self.rewards: list[float] = []

    # -- acting ---------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        """Epsilon for the next episode (episodes are counted by asks)."""
        return epsilon_at(self.schedule, self.asked)

    def value(self, state: Hashable, action: Any) -> float:
        row = self.q.get(state)
        return self.q_init if row is None else row.get(action, self.q_init)

    def best_value(self, state: Hashable, actions: Sequence[Any]) -> float:
        """max_a Q(state, a) over the actions available there (unvisited ones count as q_init)."""
        row = self.q.get(state)
        if not row:
            return self.q_init
        best = max(row.values())
        return best if len(row) >= len(actions) else max(best, self.q_init)

    def _act(self, state: Hashable, actions: list[Any], epsilon: float, rng: random.Random) -> Any:
        if rng.random() < epsilon:
            return rng.choice(actions)
        row = self.q.get(state, {})
        values = [row.get(a, self.q_init) for a in actions]
        best = max(values)
        return rng.choice([a for a, v in zip(actions, values) if v == best])

    def episode(self, epsilon: float | None = None, rng: random.Random | None = None) -> Arch:
        """Roll out one episode with the current Q table (retrying the rare invalid one)."""
        epsilon = self.epsilon if epsilon is None else epsilon
        rng = rng or self.rng
        for _ in range(100):
            prefix: list[Any] = []
            while not self.env.done(prefix):
                prefix.append(self._act(self.env.state(prefix), self.env.actions(prefix), epsilon, rng))
            arch = self.env.to_arch(prefix)
            if arch is not None:
                return arch
        return self.space.sample(rng)

    def propose(self) -> Arch:
        epsilon = self.epsilon
        return self.fresh(lambda: self.episode(epsilon))

    # -- learning --------------------------------------------------------------------------------
    def reward(self, arch: Arch, result: Result) -> float:
        """BlockQNN's early-stop reward: fitness - mu log(FLOPs/flops_ref) - rho log(density/density_ref)."""
        fitness = self.fitness(result)
        if not math.isfinite(fitness):
            return min(self.rewards) if self.rewards else 0.0
        r = fitness
        if self.mu:
            flops = result.metrics.get("flops", 2 * result.metrics.get("macs", math.nan))
            if flops and math.isfinite(flops) and flops > 0:
                r -= self.mu * math.log(flops / self.flops_ref)
        if self.rho:
            density = result.metrics.get("density")
            if density is None and hasattr(self.space, "density"):
                density = self.space.density(arch)
            if density and math.isfinite(density) and density > 0:
                r -= self.rho * math.log(density / self.density_ref)
        return r

    def transitions(self, arch: Arch) -> list[tuple[Hashable, Any, Hashable | None, list[Any]]]:
        """(state, action, next state or None at the end, actions available at the next state) per step."""
        actions = self.env.episode(arch)
        out = []
        for t, a in enumerate(actions):
            prefix = actions[:t]
            nxt = actions[:t + 1]
            last = t == len(actions) - 1
            out.append((self.env.state(prefix), a, None if last else self.env.state(nxt),
                        [] if last else self.env.actions(nxt)))
        return out

    def learn(self, transitions: Sequence[tuple[Hashable, Any, Hashable | None, list[Any]]], reward: float) -> None:
        """One backward pass of Q updates over an episode (eq. 2 with the shaped rewards of eq. 3)."""
        T = len(transitions)
        step_reward = reward / T if self.reward_shaping else 0.0
        for state, action, nxt, next_actions in reversed(transitions):
            if nxt is None:
                target = reward
            else:
                target = step_reward + self.gamma * self.best_value(nxt, next_actions)
            row = self.q.setdefault(state, {})
            row[action] = (1 - self.alpha) * row.get(action, self.q_init) + self.alpha * target

    def tell(self, arch: Arch, result: Result) -> None:
        super().tell(arch, result)
        r = self.reward(arch, result)
        self.rewards.append(r)
        episode = self.transitions(arch)
        self.memory.append((episode, r))
        self.learn(episode, r)
        for _ in range(self.replay_batch):
            self.learn(*self.memory[self.rng.randrange(len(self.memory))])

    def greedy(self) -> Arch:
        """The arch the agent would write with no exploration (ties broken by a fixed rng; the search is untouched)."""
        return self.episode(epsilon=0.0, rng=random.Random(0))
