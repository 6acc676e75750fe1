"""Evaluators for testing executors and the search loop: they run in worker processes, so they live in an
importable module (a test file is not one)."""

from __future__ import annotations

import os
import signal
import time
import zlib

from core.evaluation import Evaluator, Result
from core.testing import onemax


class WhereAmI(Evaluator):
    """Reports the worker's pid, torch threads and visible GPUs; kills its own process or hangs on request."""

    def __init__(self, sleep: float = 0.0):
        self.sleep = sleep

    def evaluate(self, arch):
        import torch

        if arch["do"] == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if arch["do"] == "hang":
            time.sleep(60)
        time.sleep(self.sleep)
        return Result(metrics={"pid": float(os.getpid()), "threads": float(torch.get_num_threads()),
                               "gpu": float(os.environ.get("CUDA_VISIBLE_DEVICES", "-1").split(",")[0]),
                               "value": float(arch["x"]) ** 2})


class Scripted(Evaluator):
    """onemax with a duration per arch (a hash of its key), one arch that is slow and one that kills its
    worker process (never the test's own)."""

    def __init__(self, slow: str = "", die: str = "", pause: float = 0.05):
        self.slow, self.die, self.pause, self.driver = slow, die, pause, os.getpid()

    def evaluate(self, arch):
        if arch.key == self.die and os.getpid() != self.driver:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(1.5 if arch.key == self.slow else self.pause * (zlib.crc32(arch.key.encode()) % 4))
        return Result(metrics=onemax(arch))


class Hangs(Evaluator):
    timeout_s = 0.5

    def evaluate(self, arch):
        if arch["c0"] == 0:
            time.sleep(30)
        return Result(metrics=onemax(arch))
