"""Evaluators: train-from-scratch with proxy settings, supernet inheritance, predictor, tabular."""

from core.evaluation.base import Evaluator, FunctionEvaluator, safe_evaluate
from core.evaluation.compression import CompressionEvaluator
from core.evaluation.contrastive import ContrastiveEvaluator
from core.evaluation.result import Result
from core.evaluation.supernet import SupernetEvaluator
from core.evaluation.tabular import TabularEvaluator
from core.evaluation.train import TrainEvaluator

__all__ = ["CompressionEvaluator", "Evaluator", "FunctionEvaluator", "Result", "safe_evaluate", "SupernetEvaluator", "ContrastiveEvaluator", "TabularEvaluator",
           "TrainEvaluator"]
