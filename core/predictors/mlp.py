"""`MLPPredictor`: a multilayer perceptron on the space's one-hot encoding.

The plain supervised baseline of predictor-based NAS: the semi-supervised
assessor (Tang et al., CVPR 2020, Sec. 4) compares itself with fully
supervised regressors of this kind, and BANANAS / "neural predictor" style
searches (White et al., AAAI 2021; Wen et al., ECCV 2020) use an ensemble of
them. Input: `space.encode(arch)` (one one-hot per choice, concatenated);
targets standardised; trained with Adam on MSE or L1; `ensemble` members
differ in their initialisation and batch order and their predictions are
averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from core.predictors.base import (PREDICTORS, Predictor, Scaler, check_loss, minibatches, regression_loss,
                                  torch_seed)
from core.api import SearchSpace


def make_mlp(n_in: int, hidden: Sequence[int], n_out: int = 1, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


@PREDICTORS.register("mlp")
class MLPPredictor(Predictor):
    """MLP regressor on `space.encode(arch)`.

    Args:
        space: the search space whose `encode` gives the input vectors.
        hidden: hidden layer widths.
        loss: "mse" or "l1".
        epochs: passes over the labelled set (mini-batches of `batch_size`).
        targets: "standard" (z-scores) or "rank" (uniform rank scores; see `core.predictors.base.Scaler`).
        ensemble: number of independently initialised members whose predictions are averaged.
        seed: seed of member 0 (member i uses seed + i).
    """

    def __init__(self, space: SearchSpace, hidden: list[int] | None = None, loss: str = "mse", epochs: int = 200,
                 batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 1e-4, dropout: float = 0.0,
                 targets: str = "standard", ensemble: int = 1, seed: int = 0):
        if ensemble < 1 or epochs < 1 or batch_size < 1:
            raise ValueError("MLPPredictor: ensemble, epochs and batch_size must be >= 1")
        self.space = space
        self.hidden = list(hidden) if hidden is not None else [128, 128]
        self.loss = check_loss(loss)
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.weight_decay, self.dropout = weight_decay, dropout
        self.ensemble, self.seed = ensemble, seed
        self.models: list[nn.Module] = []
        self.scaler = Scaler(targets)

    def _inputs(self, archs: Sequence[Any]) -> torch.Tensor:
        return self.space.encode_batch(archs)

    def fit(self, archs: Sequence[Any], targets: Sequence[float], unlabelled: Sequence[Any] = ()) -> "MLPPredictor":
        """Fit on labelled archs; `unlabelled` is accepted for the common interface and ignored (supervised)."""
        archs, y = self._check_fit_args(archs, targets)
        x = self._inputs(archs)
        t = torch.as_tensor(self.scaler.fit(y).transform(y), dtype=torch.float32)
        self.models = [self._fit_one(x, t, self.seed + i) for i in range(self.ensemble)]
        return self

    def _fit_one(self, x: torch.Tensor, t: torch.Tensor, seed: int) -> nn.Module:
        with torch_seed(seed):
            model = make_mlp(x.shape[1], self.hidden, 1, self.dropout)
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            g = torch.Generator().manual_seed(seed)
            model.train()
            for _ in range(self.epochs):
                for idx in minibatches(len(x), self.batch_size, g):
                    loss = regression_loss(model(x[idx]).squeeze(-1), t[idx], self.loss)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
        model.eval()
        return model

    @torch.no_grad()
    def predict(self, archs: Sequence[Any]) -> np.ndarray:
        if not self.models:
            raise RuntimeError("MLPPredictor.predict called before fit")
        archs = list(archs)
        if not archs:
            return np.zeros(0)
        x = self._inputs(archs)
        out = torch.stack([m(x).squeeze(-1) for m in self.models]).mean(0)
        return self.scaler.inverse(out.double().numpy())
