"""Block-token surrogates of PNAS: an LSTM and an MLP over the tokens of a cell's blocks.

Liu et al., "Progressive Neural Architecture Search", ECCV 2018 (arXiv
1712.00559), Sec. 3.3 "Performance prediction with surrogate model": the
predictor must read cells of any number of blocks, so it works on token
sequences. The LSTM reads the tokens (100-d embeddings, 100 hidden units),
its last hidden state goes through a linear layer and a sigmoid; the MLP
embeds each token, concatenates the embeddings of a block and averages the
block vectors, then 2 hidden layers of 100 and a sigmoid. Both are trained
with the L1 loss. (The paper's text is not quoted here; these settings are
those recorded in /work/shared/METHODS.md 1.5, marked unverified there.)

Blocks and tokens here. A *block* is an ordered group of choices
(`resolve_blocks`): PNAS's block (I1, I2, O1, O2) is one node of a DARTS
cell, and in the cell201 space a block is the set of edges into one node.
A choice's token is the pair (kind, value), where the kind is the choice
name with its digits removed (`cell.e13` -> `cell.e#`, `normal.node2.in0.op`
-> `normal.node#.in#.op`): like PNAS's shared input/op vocabularies, the
same op on any edge has the same embedding, so a model fitted on b-block
cells can score (b+1)-block cells. Token 0 pads. An item is either an Arch
(all blocks) or a `BlockTokens` list (the first b blocks of a cell, as PNAS
feeds partial cells).

Deviations: targets are mapped affinely from their observed range onto
[0.1, 0.9] before the sigmoid head (the paper regresses accuracies, already
in [0, 1]; the map keeps any objective, e.g. a negated latency, inside the
sigmoid's range, and predictions are mapped back). Mini-batch Adam; the
paper's optimiser settings are not known.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from core.predictors.base import (PREDICTORS, Predictor, Scaler, check_loss, minibatches, regression_loss,
                                  torch_seed)
from core.api import SearchSpace

BlockSpec = Union[str, Sequence[str]]
BlockTokens = list[list[int]]

_EDGE = re.compile(r"^(?P<prefix>.*)\.e(?P<src>\d)(?P<dst>\d)$")


def default_blocks(space: SearchSpace) -> list[list[str]]:
    """The block grouping of a space when the config gives none.

    - a `pnas_blocks` attribute of the space (list of lists of choice names), when it has one;
    - edge spaces named `<prefix>.e{j}{i}` (cell201: edge j -> i): block b = the edges into node b+1,
      ordered by target node, sources in space order;
    - the DARTS cell space (choices `<cell>.node{i}.in{j}.{input,op}`): node by node, first every node
      of the normal cell, then every node of the reduction cell;
    - otherwise one choice per block, in space order.
    """
    names = space.names
    custom = getattr(space, "pnas_blocks", None)
    if custom:
        return [list(b) for b in (custom() if callable(custom) else custom)]
    matches = [_EDGE.match(n) for n in names]
    if names and all(matches):
        by_dst: dict[tuple[str, int], list[str]] = {}
        for n, m in zip(names, matches):
            by_dst.setdefault((m["prefix"], int(m["dst"])), []).append(n)
        return [by_dst[key] for key in sorted(by_dst, key=lambda k: (k[1], k[0]))]
    node = re.compile(r"^(?P<cell>[^.]+)\.node(?P<i>\d+)\.")
    node_matches = [node.match(n) for n in names]
    if names and all(node_matches):
        groups: dict[tuple[str, int], list[str]] = {}
        cells: list[str] = []
        for n, m in zip(names, node_matches):
            if m["cell"] not in cells:
                cells.append(m["cell"])
            groups.setdefault((m["cell"], int(m["i"])), []).append(n)
        return [groups[key] for key in sorted(groups, key=lambda k: (cells.index(k[0]), k[1]))]
    return [[n] for n in names]


def resolve_blocks(space: SearchSpace, blocks: Sequence[BlockSpec] | None = None) -> list[list[str]]:
    """Choice names per block. Each entry of `blocks` is a prefix or a list of prefixes; a choice goes to the
    first block with a prefix it starts with (write `normal.node1.` with the dot, or `node1` also takes
    `node10`). Every choice must land in exactly one block; empty blocks are errors."""
    if blocks is None:
        resolved = default_blocks(space)
    else:
        if isinstance(blocks, str) or not blocks:
            raise ValueError(f"blocks: expected a non-empty list of choice-name prefixes, got {blocks!r}")
        specs = [[b] if isinstance(b, str) else list(b) for b in blocks]
        resolved = [[] for _ in specs]
        unmatched = []
        for name in space.names:
            for k, prefixes in enumerate(specs):
                if any(name.startswith(p) for p in prefixes):
                    resolved[k].append(name)
                    break
            else:
                unmatched.append(name)
        if unmatched:
            raise ValueError(f"blocks: choices {unmatched[:5]}{' ...' if len(unmatched) > 5 else ''} match no "
                             f"block prefix of {specs}")
        empty = [specs[k] for k, b in enumerate(resolved) if not b]
        if empty:
            raise ValueError(f"blocks: {empty} match no choice of the space")
    seen = [n for b in resolved for n in b]
    if sorted(seen) != sorted(space.names):
        raise ValueError(f"blocks must cover every choice once; got {resolved}")
    return resolved


def choice_kind(name: str) -> str:
    """`cell.e13` -> `cell.e#`: choices of one kind share their tokens."""
    return re.sub(r"\d+", "#", name)


class BlockTokenizer:
    """Token ids of an arch, block by block. Vocabulary: (kind, option) pairs of the space, ids from 1."""

    def __init__(self, space: SearchSpace, blocks: Sequence[BlockSpec] | None = None):
        self.space = space
        self.blocks = resolve_blocks(space, blocks)
        self.vocab: dict[tuple[str, Any], int] = {}
        for c in space.choices:
            for option in c.options:
                self.vocab.setdefault((choice_kind(c.name), option), len(self.vocab) + 1)
        self.max_block_len = max(len(b) for b in self.blocks)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 1

    def __call__(self, arch: Mapping[str, Any], depth: int | None = None) -> BlockTokens:
        """Tokens of the first `depth` blocks of `arch` (all blocks when None)."""
        blocks = self.blocks if depth is None else self.blocks[:depth]
        return [[self.vocab[(choice_kind(n), arch[n])] for n in block] for block in blocks]


def _as_tokens(item: Any, tokenizer: BlockTokenizer | None) -> BlockTokens:
    if isinstance(item, Mapping):
        if tokenizer is None:
            raise ValueError("an Arch item needs a predictor built with a space (or tokenizer)")
        return tokenizer(item)
    return [list(block) for block in item]


class _TokenPredictor(Predictor):
    """Shared fit/predict loop of the sigmoid-headed block-token models."""

    def __init__(self, space: SearchSpace | None = None, tokenizer: BlockTokenizer | None = None,
                 blocks: list | None = None, embedding_dim: int = 100, hidden: int = 100, loss: str = "l1",
                 epochs: int = 100, batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0,
                 ensemble: int = 1, seed: int = 0):
        if tokenizer is None and space is None:
            raise ValueError(f"{type(self).__name__} needs a space or a tokenizer")
        if ensemble < 1 or epochs < 1 or batch_size < 1:
            raise ValueError(f"{type(self).__name__}: ensemble, epochs and batch_size must be >= 1")
        self.tokenizer = tokenizer or BlockTokenizer(space, blocks)
        self.embedding_dim, self.hidden = embedding_dim, hidden
        self.loss = check_loss(loss)
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.ensemble, self.seed = ensemble, seed
        self.models: list[nn.Module] = []
        self.scaler = Scaler("unit")

    def _make(self) -> nn.Module:
        raise NotImplementedError

    def _tensor(self, items: Sequence[BlockTokens]) -> torch.Tensor:
        """[batch, max blocks, max block length] token ids, 0-padded."""
        n_blocks = max(len(t) for t in items)
        out = torch.zeros(len(items), n_blocks, self.tokenizer.max_block_len, dtype=torch.long)
        for i, tokens in enumerate(items):
            for b, block in enumerate(tokens):
                out[i, b, :len(block)] = torch.as_tensor(block, dtype=torch.long)
        return out

    def fit(self, archs: Sequence[Any], targets: Sequence[float], unlabelled: Sequence[Any] = ()):
        """Fit on labelled items (Archs or BlockTokens); `unlabelled` is ignored (supervised)."""
        archs, y = self._check_fit_args(archs, targets)
        x = self._tensor([_as_tokens(a, self.tokenizer) for a in archs])
        t = torch.as_tensor(self.scaler.fit(y).transform(y), dtype=torch.float32)
        self.models = []
        for k in range(self.ensemble):
            seed = self.seed + k
            with torch_seed(seed):
                model = self._make()
                opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
                g = torch.Generator().manual_seed(seed)
                model.train()
                for _ in range(self.epochs):
                    for idx in minibatches(len(x), self.batch_size, g):
                        loss = regression_loss(model(x[idx]), t[idx], self.loss)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
            model.eval()
            self.models.append(model)
        return self

    @torch.no_grad()
    def predict(self, archs: Sequence[Any], batch_size: int = 4096) -> np.ndarray:
        if not self.models:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        items = [_as_tokens(a, self.tokenizer) for a in archs]
        if not items:
            return np.zeros(0)
        chunks = []
        for start in range(0, len(items), batch_size):
            x = self._tensor(items[start:start + batch_size])
            chunks.append(torch.stack([m(x) for m in self.models]).mean(0))
        return self.scaler.inverse(torch.cat(chunks).double().numpy())


class _LSTMNet(nn.Module):
    def __init__(self, vocab: int, dim: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)                                   # [B, blocks * block_len]; pads sit inside blocks
        lengths = (flat != 0).sum(1).clamp(min=1)
        # drop the pads: pack the non-zero tokens of each row to the front, in order
        order = torch.sort((flat == 0).to(torch.int8), dim=1, stable=True).indices
        packed = torch.gather(flat, 1, order)
        out, _ = self.lstm(self.embed(packed))
        last = out[torch.arange(len(out)), lengths - 1]
        return torch.sigmoid(self.head(last)).squeeze(-1)


@PREDICTORS.register("lstm")
class LSTMPredictor(_TokenPredictor):
    """PNAS's LSTM surrogate: token embeddings (100-d) -> LSTM (100 hidden) -> last state -> linear -> sigmoid; L1.

    Args: `space` (or a `tokenizer`), `blocks` (grouping, see `resolve_blocks`),
    `embedding_dim`, `hidden`, `loss` ("l1" as the paper, or "mse"), `epochs`,
    `batch_size`, `lr`, `ensemble` (members averaged), `seed`.
    """

    def _make(self) -> nn.Module:
        return _LSTMNet(self.tokenizer.vocab_size, self.embedding_dim, self.hidden)


class _BlockMLPNet(nn.Module):
    def __init__(self, vocab: int, dim: int, block_len: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim * block_len, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x).flatten(2)                          # [B, blocks, block_len * dim]
        mask = (x != 0).any(-1, keepdim=True).float()         # blocks present
        mean = (e * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.sigmoid(self.mlp(mean)).squeeze(-1)


@PREDICTORS.register("block_mlp")
class BlockMLPPredictor(_TokenPredictor):
    """PNAS's MLP surrogate: token embeddings concatenated per block, averaged over blocks, 2 hidden layers of 100,
    sigmoid output, L1 loss. Same arguments as `LSTMPredictor`."""

    def _make(self) -> nn.Module:
        return _BlockMLPNet(self.tokenizer.vocab_size, self.embedding_dim, self.tokenizer.max_block_len, self.hidden)
