"""Distillation: taps by module path, standard losses, the `Distiller`, teachers and multi-step KD.

Blockwise distillation (DNA) lives in `core.strategies.dna`, which uses
`StagedTeacher` from here.
"""

from core.distill.distiller import Distiller, TermSpec, build_term
from core.distill.losses import (DISTILL_LOSSES, ATTerm, CETerm, DistillTerm, HintTerm, KDTerm, MMDTerm, NSTTerm,
                                 at_loss, attention_map, feature_mmd, kd_loss, mmd)
from core.distill.multistep import MultiStepDistillation, StageRecord, make_optimizer, train_distiller
from core.distill.taps import Taps, parse_tap, resolve_module
from core.distill.teachers import (SmallCNN, StagedTeacher, check_teacher_spec, freeze_teacher, load_state,
                                   load_teacher, register_teacher)

__all__ = ["Taps", "parse_tap", "resolve_module", "Distiller", "TermSpec", "build_term", "DISTILL_LOSSES",
           "DistillTerm", "KDTerm", "CETerm", "HintTerm", "ATTerm", "MMDTerm", "NSTTerm", "kd_loss", "at_loss",
           "attention_map", "mmd", "feature_mmd", "MultiStepDistillation", "StageRecord", "train_distiller",
           "make_optimizer", "load_teacher", "load_state", "register_teacher", "check_teacher_spec", "freeze_teacher",
           "StagedTeacher", "SmallCNN"]
