"""`Distiller`: a frozen teacher, taps on teacher and student, and a weighted sum of loss terms.

Configured from a plain dict (YAML)::

    teacher: {name: resnet34, checkpoint: weights/r34.pth, kwargs: {num_classes: 100}}
    terms:
      - {loss: kd, weight: 0.9, temperature: 4}               # logits: tap "" is the model output
      - {loss: ce, weight: 0.1}
      - {loss: hint, student: layer2, teacher: layer3, weight: 1.0}
      - {loss: at, student: layer3, teacher: layer4, weight: 500}

Each term has `loss` (a name in `DISTILL_LOSSES`), `student` and `teacher`
taps (module paths, `""` = the model's output, `"path:input"` = a module's
input; both default to `""`), `weight` (default 1) and the loss's own
parameters. Use::

    distiller = Distiller.from_config(cfg, student, example_input=x[:2])
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1)
    out = distiller(x)                  # student output; teacher runs under no_grad in eval mode
    loss = distiller.loss(out, y)       # weighted sum; per-term values in distiller.last_terms
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.distill.losses import DISTILL_LOSSES, DistillTerm
from core.distill.taps import Taps
from core.distill.teachers import freeze_teacher, load_teacher
from core.engine.registry import ConfigError, check_kwargs

_TERM_KEYS = ("loss", "student", "teacher", "weight")


@dataclass(frozen=True)
class TermSpec:
    loss: str
    student: str = ""
    teacher: str = ""
    weight: float = 1.0


def build_term(cfg: Mapping[str, Any], key: str) -> tuple[TermSpec, DistillTerm]:
    """Validate one term mapping; ConfigError names `key.<field>` for every mistake."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{key}: expected a mapping with loss, student, teacher, weight; got {cfg!r}")
    if "loss" not in cfg:
        raise ConfigError(f"{key}.loss: missing; choose from {', '.join(DISTILL_LOSSES.names())}")
    name = cfg["loss"]
    factory = DISTILL_LOSSES.get(name, f"{key}.loss")
    weight = cfg.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool):
        raise ConfigError(f"{key}.weight: expected a number, got {weight!r}")
    for tap in ("student", "teacher"):
        if not isinstance(cfg.get(tap, ""), str):
            raise ConfigError(f"{key}.{tap}: expected a module path string ('' for the output), got {cfg[tap]!r}")
    params = {k: v for k, v in cfg.items() if k not in _TERM_KEYS}
    params = check_kwargs(factory, params, key)
    try:
        term = factory(**params)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    return TermSpec(name, cfg.get("student", ""), cfg.get("teacher", ""), float(weight)), term


class Distiller(nn.Module):
    """Teacher (frozen, eval mode), student, taps on both and weighted loss terms; see the module docstring.

    The teacher's forward runs under `torch.no_grad`; `train()` never puts it
    back in training mode. Terms with parameters (the hint adapters) are
    submodules, so `trainable_parameters()` (student + terms) is what an
    optimizer takes and `state_dict()` saves them. `teacher=None` is allowed
    when every term is label-only (`ce`).
    """

    def __init__(self, teacher: nn.Module | None, student: nn.Module,
                 terms: Sequence[Mapping[str, Any] | tuple[TermSpec, DistillTerm]],
                 example_input: torch.Tensor | None = None, tap_backend: str = "auto"):
        super().__init__()
        if not terms:
            raise ConfigError("distill.terms: empty; give at least one term, e.g. {loss: kd, temperature: 4}")
        built = [t if isinstance(t, tuple) else build_term(t, f"distill.terms[{i}]") for i, t in enumerate(terms)]
        self.specs = [spec for spec, _ in built]
        self.terms = nn.ModuleList(term for _, term in built)
        needs_teacher = any(t.uses_teacher for t in self.terms)
        if needs_teacher and teacher is None:
            raise ConfigError("distill.teacher: missing; the terms "
                              f"{[s.loss for s, t in zip(self.specs, self.terms) if t.uses_teacher]} need a teacher")
        self.teacher = freeze_teacher(teacher) if teacher is not None else None
        self.student = student
        self._student_taps = Taps(student, sorted({s.student for s in self.specs}), backend=tap_backend)
        teacher_taps = sorted({s.teacher for s, t in zip(self.specs, self.terms) if t.uses_teacher})
        # a teacher no term reads (only `ce` terms) is not run at all
        self._teacher_taps = (Taps(teacher, teacher_taps, backend=tap_backend)
                              if self.teacher is not None and teacher_taps else None)
        self._features: tuple[dict, dict] | None = None
        self.last_terms: dict[str, float] = {}
        #: the teacher's output of the last forward pass (None when no term reads the teacher)
        self.last_teacher_output: Any = None
        if example_input is not None:
            self.setup(example_input)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], student: nn.Module, teacher: nn.Module | None = None,
                    example_input: torch.Tensor | None = None) -> "Distiller":
        """`cfg` = {teacher: <load_teacher spec>, terms: [...]}; an explicit `teacher` module wins over the spec."""
        unknown = sorted(set(cfg) - {"teacher", "terms", "tap_backend"})
        if unknown:
            raise ConfigError(f"distill.{unknown[0]}: unknown key; distill takes teacher, terms, tap_backend")
        terms = cfg.get("terms")
        if not isinstance(terms, Sequence) or isinstance(terms, str):
            raise ConfigError(f"distill.terms: expected a list of term mappings, got {terms!r}")
        if teacher is None and cfg.get("teacher") is not None:
            teacher = load_teacher(cfg["teacher"], key="distill.teacher")
        return cls(teacher, student, list(terms), example_input, cfg.get("tap_backend", "auto"))

    # -- modes and parameters ---------------------------------------------------------------
    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and term (adapter) parameters: what the optimizer updates."""
        seen = set()
        for module in (self.student, self.terms):
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    yield p

    # -- forward and loss ----------------------------------------------------------------------
    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Run teacher (no grad) and student on the same inputs; return the student's output."""
        teacher_feats: dict = {}
        self.last_teacher_output = None
        if self._teacher_taps is not None:
            self.teacher.eval()
            with torch.no_grad():
                self.last_teacher_output, teacher_feats = self._teacher_taps(*inputs, **kwargs)
        output, student_feats = self._student_taps(*inputs, **kwargs)
        self._features = (student_feats, teacher_feats)
        return output

    @torch.no_grad()
    def setup(self, example_input: torch.Tensor | tuple) -> None:
        """Run one forward pass on `example_input` so terms that need shapes (hint adapters) build their layers.

        The student's BatchNorm statistics are left untouched (it runs in eval mode here).
        """
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        was_training = self.student.training
        self.student.eval()
        try:
            self(*inputs)
        finally:
            self.student.train(was_training)
        student_feats, teacher_feats = self._features
        for spec, term in zip(self.specs, self.terms):
            if term.needs_setup:
                term.setup(student_feats[spec.student], teacher_feats[spec.teacher])
        self._features = None

    def loss(self, student_out: Any = None, targets: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted sum of the terms on the tensors of the last forward pass.

        `student_out` is the student's output (what `forward` returned); it
        serves the `""` student tap. Per-term values (unweighted) go to `last_terms`.
        """
        if self._features is None:
            raise RuntimeError("Distiller.loss: call the distiller on a batch first (out = distiller(x))")
        student_feats, teacher_feats = self._features
        total, self.last_terms = 0.0, {}
        for i, (spec, term) in enumerate(zip(self.specs, self.terms)):
            s = student_out if spec.student == "" and student_out is not None else student_feats[spec.student]
            t = teacher_feats[spec.teacher] if term.uses_teacher else None
            value = term(s, t, targets)
            self.last_terms[f"{i}:{spec.loss}"] = float(value.detach())
            total = total + spec.weight * value
        self._features = None
        return total

    def close(self) -> None:
        """Remove the forward hooks from teacher and student."""
        self._student_taps.remove()
        if self._teacher_taps is not None:
            self._teacher_taps.remove()
