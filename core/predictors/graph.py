"""Architectures as node-labelled DAGs: `(adjacency, node features)` tensors for graph predictors.

`arch_graph(space, arch)` uses `space.graph(arch) -> (adjacency, ops)` when
the space has it (cell201: 8 nodes, ops on nodes, NAS-Bench-101 style).
Otherwise it falls back to a **chain graph over the choices**: an `input`
node, one node per choice in space order labelled `(choice name, option)`,
an `output` node, each node feeding the next. The chain keeps everything the
one-hot encoding knows (which option each choice took) in graph form; it knows
nothing of the real wiring, which only a space's own `graph` can tell.

`GraphFeaturizer` turns node labels into one-hot rows over a vocabulary fixed
at `fit` (a label first seen at predict time gets an all-zero row) and pads
graphs to a common node count. When `graph` returns a 2-D numeric array as
ops, it is used as the node features as it is. With `prune`, nodes off every
input-to-output path (node 0 to node N-1, `none` nodes counting as absent)
lose their links and their label, as NAS-Bench-101 prunes its graphs: cells
that compute the same function then get the same tensors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from core.api import SearchSpace


def chain_graph(space: SearchSpace, arch: Mapping[str, Any]) -> tuple[np.ndarray, list[Any]]:
    """input -> choice 1 -> ... -> choice n -> output, nodes labelled (name, option)."""
    n = len(space.choices) + 2
    adj = np.zeros((n, n), dtype=np.float32)
    idx = np.arange(n - 1)
    adj[idx, idx + 1] = 1
    return adj, ["input", *[(c.name, arch[c.name]) for c in space.choices], "output"]


def arch_graph(space: SearchSpace, arch: Mapping[str, Any], **options: Any) -> tuple[np.ndarray, Any]:
    """`space.graph(arch, **options)` when the space has a graph form, else the chain graph over the choices."""
    graph = getattr(space, "graph", None)
    if callable(graph):
        return graph(arch, **options)
    return chain_graph(space, arch)


def live_nodes(adj: np.ndarray, labels: Sequence[Any] | None = None, absent: Any = "none") -> np.ndarray:
    """Nodes on some path from node 0 (input) to node N-1 (output) that avoids nodes labelled `absent`.

    NAS-Bench-101's pruning (Ying et al., ICML 2019, `ModelSpec`): a node no
    input-to-output path goes through cannot change the network's output.
    """
    n = len(adj)
    ok = np.ones(n, dtype=bool)
    if labels is not None:
        ok &= np.array([not (isinstance(v, str) and v == absent) for v in labels], dtype=bool)
    edges = (np.asarray(adj) > 0) & ok[:, None] & ok[None, :]

    def reach(start: int, step: np.ndarray) -> np.ndarray:
        seen = np.zeros(n, dtype=bool)
        if not ok[start]:
            return seen
        seen[start] = True
        frontier = seen.copy()
        while frontier.any():
            frontier = step[frontier].any(0) & ~seen
            seen |= frontier
        return seen

    return reach(0, edges) & reach(n - 1, edges.T)


def _label_key(label: Any) -> Any:
    if isinstance(label, list):
        return tuple(_label_key(v) for v in label)
    return label


class GraphFeaturizer:
    """(adjacency [N, N], features [N, F], node mask [N]) tensors for batches of archs."""

    def __init__(self, space: SearchSpace, options: Mapping[str, Any] | None = None, prune: bool = False):
        self.space = space
        self.options = dict(options or {})
        self.prune = prune
        self.vocab: dict[Any, int] | None = None
        self.numeric_width: int | None = None
        self.n_nodes = 0

    def fit(self, archs: Sequence[Mapping[str, Any]]) -> "GraphFeaturizer":
        graphs = [arch_graph(self.space, a, **self.options) for a in archs]
        self.n_nodes = max(len(np.asarray(adj)) for adj, _ in graphs)
        first = graphs[0][1]
        if isinstance(first, np.ndarray) and first.ndim == 2 and np.issubdtype(first.dtype, np.number):
            self.numeric_width = int(first.shape[1])
            return self
        labels: dict[Any, int] = {}
        for _, ops in graphs:
            for label in ops:
                labels.setdefault(_label_key(label), len(labels))
        self.vocab = labels
        return self

    @property
    def n_features(self) -> int:
        return self.numeric_width if self.numeric_width is not None else len(self.vocab or {})

    def transform(self, archs: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.vocab is None and self.numeric_width is None:
            raise RuntimeError("GraphFeaturizer.transform called before fit")
        n, f = self.n_nodes, self.n_features
        A = torch.zeros(len(archs), n, n)
        X = torch.zeros(len(archs), n, f)
        M = torch.zeros(len(archs), n)
        for b, arch in enumerate(archs):
            adj, ops = arch_graph(self.space, arch, **self.options)
            adj = np.asarray(adj, dtype=np.float32)
            k = len(adj)
            if k > n:
                raise ValueError(f"graph of {k} nodes, but the featurizer was fitted on graphs of at most {n}")
            live = live_nodes(adj, None if self.numeric_width is not None else ops) if self.prune else None
            if live is not None:
                adj = adj * live[:, None] * live[None, :]
            A[b, :k, :k] = torch.from_numpy(adj)
            M[b, :k] = 1
            if self.numeric_width is not None:
                X[b, :k] = torch.as_tensor(np.asarray(ops, dtype=np.float32))
            else:
                for i, label in enumerate(ops):
                    j = self.vocab.get(_label_key(label))
                    if j is not None and (live is None or live[i]):
                        X[b, i, j] = 1
        return A, X, M
