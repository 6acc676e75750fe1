"""Training-loop statistics summed on the device and read on the host once in a while.

Reading a value computed on a GPU (`loss.item()`, `float(loss)`) waits until
every kernel queued before it has run; doing it every step leaves the GPU
idle while Python prepares the next step. `StepMeter` adds each step's values
on their device and reads them once per `every` steps (and when asked for the
totals). A loss that turns NaN or infinite is caught at that read: the loop
stops at most `every` steps later, and the error names the steps it happened in.
"""

from __future__ import annotations

import math

import torch


class StepMeter:
    """`add(name=value, ...)` per step, `step()` after it; `totals()` reads the sums (one host sync).

    `check` names the values that must stay finite (the loss); `error` is the exception raised when
    one does not, with `what` (e.g. "SPOS supernet loss") in its message.
    """

    def __init__(self, what: str = "loss", every: int = 50, check: tuple[str, ...] = ("loss",),
                 error: type[Exception] = FloatingPointError):
        if every < 1:
            raise ValueError(f"log interval must be >= 1, got {every!r}")
        self.what, self.every, self.check_names, self.error = what, every, check, error
        self.sums: dict[str, torch.Tensor | float] = {}
        self.steps = 0
        self._checked = 0
        self._last: dict[str, torch.Tensor] = {}

    def add(self, **values: torch.Tensor | float) -> None:
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach()
                if name in self.check_names:
                    flag = ~torch.isfinite(value)
                    self._last[name] = flag if name not in self._last else (self._last[name] | flag)
            self.sums[name] = self.sums.get(name, 0.0) + value

    def step(self, where: str = "") -> None:
        """Count a step; every `every` steps read the sums and check them (raises `error` on NaN/inf)."""
        self.steps += 1
        if self.steps % self.every == 0:
            self.check(where)

    def check(self, where: str = "") -> None:
        bad = [name for name, flag in self._last.items() if bool(flag.any())]
        if bad:
            first, last = self._checked + 1, self.steps
            span = f"step {last}" if first == last else f"steps {first}-{last}"
            raise self.error(f"{self.what} is not finite ({', '.join(bad)}) within {span}"
                             + (f" {where}" if where else ""))
        self._last.clear()
        self._checked = self.steps

    def totals(self, where: str = "") -> dict[str, float]:
        """The sums as floats (checked first)."""
        self.check(where)
        names = list(self.sums)
        values = [self.sums[n] for n in names]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        if tensors:
            host = torch.stack([t.double().reshape(()) for t in tensors]).cpu().tolist()
            it = iter(host)
            values = [next(it) if isinstance(v, torch.Tensor) else v for v in values]
        out = {n: float(v) for n, v in zip(names, values)}
        if any(not math.isfinite(out[n]) for n in self.check_names if n in out):
            raise self.error(f"{self.what} is not finite at the end of {self.steps} steps {where}".rstrip())
        return out
