"""PocketNet's distillation: ArcFace CE + w * MSE between normalised embeddings, from one or many teacher steps.

Boutros et al., "PocketNet", IEEE Access 2022, sec. III-C/D; official
`train_kd.py`, `train_multi_step_kd.py`:

    L = CE(ArcFace(student(x)), y) + w * MSE(normalize(student(x)), normalize(teacher(x))),  w = 100

(`MSELoss` with mean reduction over batch and embedding dimensions.)

Multi-step KD (sec. III-D): instead of distilling from the fully trained
teacher, the student follows the teacher's own training: at student epoch e
(0-based) the teacher is the checkpoint saved at the end of the teacher's
epoch e + 1 (the official code loads step `(epoch + 1) * steps_per_epoch`),
so early on the student learns from an immature teacher and the knowledge
gap grows step by step, as with teacher assistants (TAKD, Mirzadeh et al.
2020; `core.distill.multistep` has that chain form). A teacher run of this
task saves `epochs/epoch_001.pt`, `epoch_002.pt`, ... for exactly this.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import SPACES, ConfigError
from core.engine.runs import load_checkpoint, save_checkpoint

EPOCH_FORMAT = "archforge-face-epoch-1"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")


def embedding_kd_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between the L2-normalised student and teacher embeddings (the teacher side carries no gradient)."""
    return F.mse_loss(F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1))


def pocketnet_kd_loss(logits: torch.Tensor, labels: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor | None,
                      weight: float = 100.0) -> tuple[torch.Tensor, dict[str, float]]:
    """CE(margin logits) + weight * embedding_kd_loss; returns the loss and its two terms."""
    ce = F.cross_entropy(logits, labels)
    if teacher is None:
        return ce, {"ce": float(ce.detach())}
    kd = embedding_kd_loss(student, teacher)
    return ce + weight * kd, {"ce": float(ce.detach()), "kd": float(kd.detach())}


# -- teacher checkpoints by epoch -------------------------------------------------------------------------------
def epoch_checkpoint_path(folder: str | Path, epoch: int) -> Path:
    """`folder/epoch_XXX.pt`: the network at the end of its `epoch`-th epoch (1-based)."""
    return Path(folder) / f"epoch_{epoch:03d}.pt"


def save_epoch_checkpoint(folder: str | Path, epoch: int, model: nn.Module) -> Path:
    path = epoch_checkpoint_path(folder, epoch)
    save_checkpoint(path, {"format": EPOCH_FORMAT, "epoch": epoch, "state_dict": model.state_dict()})
    return path


def available_epochs(folder: str | Path) -> list[int]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"face_recognition.teacher.epochs: folder not found: {folder}")
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _EPOCH_FILE.match(p.name)))


def multistep_teacher_epoch(student_epoch: int) -> int:
    """The teacher epoch (1-based, completed epochs) a student uses at its 0-based `student_epoch`: e + 1."""
    if student_epoch < 0:
        raise ValueError(f"student epoch must be >= 0, got {student_epoch}")
    return student_epoch + 1


class TeacherSchedule:
    """Which teacher weights the student sees at each epoch: one fixed checkpoint (plain KD) or a folder of
    per-epoch checkpoints (multi-step KD)."""

    def __init__(self, teacher: nn.Module, checkpoint: str | Path | None = None, epochs_dir: str | Path | None = None):
        if (checkpoint is None) == (epochs_dir is None):
            raise ConfigError("face_recognition.teacher: give exactly one of checkpoint (plain KD) or "
                              "epochs (a folder of epoch_XXX.pt, multi-step KD)")
        self.teacher = teacher
        self.checkpoint = Path(checkpoint).expanduser() if checkpoint else None
        self.epochs_dir = Path(epochs_dir).expanduser() if epochs_dir else None
        self.loaded: Path | None = None
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @property
    def multistep(self) -> bool:
        return self.epochs_dir is not None

    def check(self, student_epochs: int) -> None:
        """Fail before training if a needed checkpoint is missing (the official code stops training there)."""
        if not self.multistep:
            if not self.checkpoint.is_file():
                raise FileNotFoundError(f"face_recognition.teacher.checkpoint: not found: {self.checkpoint}")
            return
        have = set(available_epochs(self.epochs_dir))
        missing = [multistep_teacher_epoch(e) for e in range(student_epochs) if multistep_teacher_epoch(e) not in have]
        if missing:
            raise FileNotFoundError(f"face_recognition.teacher.epochs: {self.epochs_dir} lacks "
                                    f"epoch_{missing[0]:03d}.pt (multi-step KD over {student_epochs} student epochs "
                                    f"needs teacher epochs 1..{student_epochs}; found {sorted(have) or 'none'})")

    def path_for(self, student_epoch: int) -> Path:
        if not self.multistep:
            return self.checkpoint
        return epoch_checkpoint_path(self.epochs_dir, multistep_teacher_epoch(student_epoch))

    def load(self, student_epoch: int) -> nn.Module:
        """Put the right weights in the teacher for `student_epoch` (0-based); returns it in eval mode."""
        path = self.path_for(student_epoch)
        if path != self.loaded:
            self.teacher.load_state_dict(_state_dict(load_checkpoint(path), path))
            self.loaded = path
        return self.teacher.eval()


def _state_dict(payload: Mapping[str, Any], path: Path) -> Mapping[str, torch.Tensor]:
    for key in ("state_dict", "model", "backbone"):
        if isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    state = {k[7:] if k.startswith("module.") else k: v for k, v in payload.items()}
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict (or a checkpoint holding one under 'state_dict')")
    return state


def build_teacher(spec: Mapping[str, Any], space_defaults: Mapping[str, Any] | None = None) -> TeacherSchedule:
    """A teacher from the config: `{space: {name: face_backbone, model: iresnet100, ...}, arch: null,
    checkpoint: teacher.pt}` or `{..., epochs: runs/teacher/epochs}` for multi-step KD.

    The network is `SPACES.build(space).build(arch)` (`space_defaults`, the data's input size and
    channels, fill keys the section leaves out): any face space (an iResNet, MobileFaceNet, a
    PocketNet genotype). A checkpoint is an archforge `model.pt`/`epoch_XXX.pt` or a plain state dict
    (insightface's `backbone.pth`).
    """
    unknown = set(spec) - {"space", "arch", "checkpoint", "epochs"}
    if unknown:
        raise ConfigError(f"face_recognition.teacher.{sorted(unknown)[0]}: unknown key; "
                          f"teacher takes space, arch, checkpoint, epochs")
    for key in ("checkpoint", "epochs"):
        if spec.get(key) == "???":
            raise ConfigError(f"face_recognition.teacher.{key}: not set; pass face_recognition.teacher.{key}=PATH")
    if not isinstance(spec.get("space"), Mapping):
        raise ConfigError("face_recognition.teacher.space: missing; e.g. {name: face_backbone, model: iresnet100}")
    extra = {k: v for k, v in (space_defaults or {}).items() if k not in spec["space"]}
    space = SPACES.build(spec["space"], "face_recognition.teacher.space", **extra)
    arch = spec.get("arch")
    if arch is None:
        arch = space.default()
    elif isinstance(arch, str) and arch.endswith(".json"):
        from core.api import Arch

        path = Path(arch).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"face_recognition.teacher.arch: arch file not found: {path}")
        arch = Arch.from_json(path.read_text())
    return TeacherSchedule(space.build(arch), spec.get("checkpoint"), spec.get("epochs"))


__all__ = [
    "EPOCH_FORMAT",
    "TeacherSchedule",
    "available_epochs",
    "build_teacher",
    "embedding_kd_loss",
    "epoch_checkpoint_path",
    "multistep_teacher_epoch",
    "pocketnet_kd_loss",
    "save_epoch_checkpoint",
]
