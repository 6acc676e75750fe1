"""Where evaluations run. `serial` runs them in this process, one after another."""

from __future__ import annotations

from collections.abc import Sequence

from core.evaluation.base import Evaluator, safe_evaluate
from core.evaluation.result import Result
from core.api import Arch


class SerialExecutor:
    name = "serial"

    def map(self, evaluator: Evaluator, archs: Sequence[Arch]) -> list[Result]:
        return [safe_evaluate(evaluator, arch) for arch in archs]

    def close(self) -> None:
        return None


EXECUTORS = {"serial": SerialExecutor}


def make_executor(name: str = "serial") -> SerialExecutor:
    try:
        return EXECUTORS[name]()
    except KeyError:
        raise ValueError(f"search.executor: unknown executor {name!r}; known: {sorted(EXECUTORS)}") from None
