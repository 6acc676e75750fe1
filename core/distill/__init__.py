"""Distillation: taps by module path, standard losses, the `Distiller`, teachers and multi-step KD.

GAN losses (standard, LSGAN, PU-GAN) and portable GAN distillation (a student generator and a student
discriminator) serve every GAN task. Blockwise distillation (DNA: student blocks trained against a
`StagedTeacher`'s stages, candidates scored per block) is `core.distill.blockwise`; `core.oneshot.dna` and
`core.oneshot.dna_ranking` build searches on it.
"""

from core.distill.blockwise import (block_losses, guide_and_target, recalibrate, score_archs, teacher_features,
                                    train_block)
from core.distill.distiller import Distiller, TermSpec, build_term
from core.distill.gan_losses import GAN_MODES, GANLoss, PriorSchedule, pu_discriminator_loss, \
    pu_lsgan_discriminator_loss
from core.distill.losses import (DISTILL_LOSSES, ATTerm, CETerm, DistillTerm, GramTerm, HintTerm, KDTerm, L1Term,
                                 MMDTerm, NSTTerm, at_loss, attention_map, feature_mmd, gram_matrix, kd_loss, mmd)
from core.distill.portable_gan import PortableGANDistillation
from core.distill.multistep import MultiStepDistillation, StageRecord, make_optimizer, train_distiller
from core.distill.taps import Taps, parse_tap, resolve_module
from core.distill.teachers import (SmallCNN, StagedTeacher, check_teacher_spec, freeze_teacher, load_state,
                                   load_teacher, register_teacher)

__all__ = ["Taps", "parse_tap", "resolve_module", "Distiller", "TermSpec", "build_term", "DISTILL_LOSSES",
           "DistillTerm", "KDTerm", "CETerm", "HintTerm", "ATTerm", "MMDTerm", "NSTTerm", "L1Term", "GramTerm", "gram_matrix",
           "kd_loss", "at_loss", "GAN_MODES", "GANLoss", "PriorSchedule", "pu_discriminator_loss",
           "pu_lsgan_discriminator_loss", "PortableGANDistillation",
           "attention_map", "mmd", "feature_mmd", "MultiStepDistillation", "StageRecord", "train_distiller",
           "make_optimizer", "load_teacher", "load_state", "register_teacher", "check_teacher_spec", "freeze_teacher",
           "StagedTeacher", "SmallCNN", "train_block", "recalibrate", "block_losses", "guide_and_target",
           "teacher_features", "score_archs"]
