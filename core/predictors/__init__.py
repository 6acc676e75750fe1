"""Surrogate models of architecture quality, registered by name in `PREDICTORS`.

- `mlp`: `MLPPredictor`, an MLP (optionally an ensemble) on the space's one-hot encoding;
- `lstm`, `block_mlp`: PNAS's block-token surrogates (Liu et al., ECCV 2018);
- `assessor`: the semi-supervised assessor (Tang et al., CVPR 2020): graph auto-encoder,
  similarity graph over labelled and unlabelled archs, GCN.

All speak `fit(archs, targets, unlabelled=()) -> self` and `predict(archs) -> np.ndarray`.
"""

from core.predictors.assessor import SemiSupervisedAssessor
from core.predictors.base import PREDICTORS, Predictor, kendall_tau
from core.predictors.graph import GraphFeaturizer, arch_graph, chain_graph
from core.predictors.mlp import MLPPredictor
from core.predictors.sequence import (BlockMLPPredictor, BlockTokenizer, LSTMPredictor, default_blocks,
                                      resolve_blocks)

__all__ = ["PREDICTORS", "Predictor", "kendall_tau", "MLPPredictor", "LSTMPredictor", "BlockMLPPredictor",
           "BlockTokenizer", "SemiSupervisedAssessor", "GraphFeaturizer", "arch_graph", "chain_graph",
           "default_blocks", "resolve_blocks"]
