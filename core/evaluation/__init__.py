"""Evaluators: train-from-scratch with proxy settings, supernet inheritance, predictor, tabular."""

from core.evaluation.base import Evaluator, FunctionEvaluator, safe_evaluate
from core.evaluation.result import Result

__all__ = ["Evaluator", "FunctionEvaluator", "Result", "safe_evaluate"]
