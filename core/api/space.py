"""`SearchSpace`: the set of architectures a strategy may propose.

A space is an ordered list of `Choice`s plus rules: which combinations are
valid (`is_valid`), which choices matter for a given arch (`active`, e.g. the
layers beyond a stage's depth do not), and how to turn an arch into a network
(`build`). Inactive choices are reset to their defaults (`canonical`) so two
archs that build the same network have the same key and are never evaluated
twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from core.api.arch import Arch
from core.api.choice import Choice


class SearchSpace:
    """Base class; subclasses pass their choices and override `build` (and, when they have one, `supernet`)."""

    max_sample_tries = 1000

    def __init__(self, choices: Sequence[Choice]):
        names = [c.name for c in choices]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"search space has repeated choice names: {dupes}")
        self.choices: tuple[Choice, ...] = tuple(choices)
        self._by_name = {c.name: c for c in self.choices}
        self._offsets = [0]
        for c in self.choices:
            self._offsets.append(self._offsets[-1] + len(c))

    # -- introspection -------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def choice(self, name: str) -> Choice:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"search space {type(self).__name__} has no choice {name!r}") from None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.choices]

    def size(self) -> int:
        """Number of distinct architectures (product of option counts, over canonical archs where choices nest)."""
        return math.prod(len(c) for c in self.choices)

    def default(self) -> Arch:
        return self.canonical(Arch({c.name: c.default for c in self.choices}))

    # -- rules subclasses refine ---------------------------------------------
    def active(self, arch: Mapping[str, Any]) -> list[str]:
        """Names of the choices that change the network for this arch (default: all)."""
        return self.names

    def canonical(self, arch: Arch) -> Arch:
        """Reset inactive choices to their defaults."""
        active = set(self.active(arch))
        if len(active) == len(self.choices):
            return arch
        return arch.updated({c.name: c.default for c in self.choices if c.name not in active})

    def constraint_error(self, arch: Arch) -> str | None:
        """A space-specific reason the arch is invalid, or None (override for structural rules)."""
        return None

    def check(self, arch: Mapping[str, Any]) -> Arch:
        """Return `arch` as a canonical Arch or raise ValueError naming the bad choice."""
        arch = arch if isinstance(arch, Arch) else Arch(arch)
        missing = [n for n in self.names if n not in arch]
        if missing:
            raise ValueError(f"arch is missing choices {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        extra = [n for n in arch if n not in self._by_name]
        if extra:
            raise ValueError(f"arch has unknown choices {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        for c in self.choices:
            if arch[c.name] not in c.options:
                raise ValueError(f"choice {c.name!r} = {arch[c.name]!r} is not one of {list(c.options)}")
        reason = self.constraint_error(arch)
        if reason:
            raise ValueError(reason)
        return self.canonical(arch)

    def is_valid(self, arch: Mapping[str, Any]) -> bool:
        try:
            self.check(arch)
        except (ValueError, KeyError):
            return False
        return True

    # -- sampling and variation ----------------------------------------------
    def _until_valid(self, make, what: str) -> Arch:
        for _ in range(self.max_sample_tries):
            arch = make()
            if self.constraint_error(arch) is None:
                return self.canonical(arch)
        raise RuntimeError(f"{type(self).__name__}: no valid arch after {self.max_sample_tries} tries of {what}")

    def sample(self, rng: random.Random) -> Arch:
        return self._until_valid(lambda: Arch({c.name: rng.choice(c.options) for c in self.choices}), "sample")

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """Change exactly one active choice to a different option (retrying until valid)."""
        arch = self.check(arch)
        candidates = [n for n in self.active(arch) if len(self._by_name[n]) > 1]
        if not candidates:
            raise ValueError("arch has no choice with more than one option to mutate")

        def make():
            name = rng.choice(candidates)
            options = [o for o in self._by_name[name].options if o != arch[name]]
            return arch.replace(**{name: rng.choice(options)})

        return self._until_valid(make, "mutate")

    def crossover(self, a: Arch, b: Arch, rng: random.Random) -> Arch:
        """Uniform crossover: each choice from either parent with probability 1/2."""
        return self._until_valid(
            lambda: Arch({c.name: (a if rng.random() < 0.5 else b)[c.name] for c in self.choices}), "crossover")

    # -- encodings ------------------------------------------------------------
    @property
    def encoding_size(self) -> int:
        return self._offsets[-1]

    def encode(self, arch: Mapping[str, Any]) -> torch.Tensor:
        """Concatenated one-hot vectors, one per choice in space order (injective on valid archs)."""
        out = torch.zeros(self.encoding_size)
        for i, c in enumerate(self.choices):
            out[self._offsets[i] + c.index(arch[c.name])] = 1.0
        return out

    def encode_batch(self, archs: Iterable[Mapping[str, Any]]) -> torch.Tensor:
        archs = list(archs)
        if not archs:
            return torch.zeros(0, self.encoding_size)
        return torch.stack([self.encode(a) for a in archs])

    def indices(self, arch: Mapping[str, Any]) -> list[int]:
        """Option index per choice, in space order (handy for tabular agents and trees)."""
        return [c.index(arch[c.name]) for c in self.choices]

    def from_indices(self, indices: Sequence[int]) -> Arch:
        return Arch({c.name: c.options[i] for c, i in zip(self.choices, indices, strict=True)})

    # -- networks ---------------------------------------------------------------
    def build(self, arch: Mapping[str, Any], **overrides: Any) -> nn.Module:
        """A standalone network for `arch` (subclasses implement it)."""
        raise NotImplementedError(f"{type(self).__name__} does not build networks")

    def supernet(self, **overrides: Any) -> nn.Module:
        """One module holding every candidate with shared weights (spaces that have one implement it)."""
        raise NotImplementedError(f"{type(self).__name__} has no supernet")
