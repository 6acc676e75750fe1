"""Margin-based classification heads over identities: ArcFace, CosFace, plain softmax.

- ArcFace: Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss
  for Deep Face Recognition", CVPR 2019, eq. 3: logit_j = s cos(theta_j) for
  j != y and s cos(theta_y + m) for the target, with theta the angle between the
  L2-normalised embedding and class weight. PocketNet trains with s = 64,
  m = 0.5 (official `config.s`, `config.m`, `utils/losses.py::ArcFace`). Where
  theta_y + m would pass pi (cos theta_y <= cos(pi - m)) the official code uses
  cos theta_y - m sin(pi - m) instead, which keeps the logit monotonic; so do we.
- CosFace: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face
  Recognition", CVPR 2018, eq. 4: s (cos theta_y - m), defaults s = 64, m = 0.35.
- Softmax: a linear layer (what the PocketNet search trains, sec. III-B).

Heads take `(embeddings, labels)` and return logits for cross-entropy; at
evaluation (`labels=None`) they return the unmargined logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _CosineHead(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int, s: float, m: float):
        super().__init__()
        self.s, self.m = float(s), float(m)
        # (in, out) like the official kernel, N(0, 0.01) init
        self.kernel = nn.Parameter(torch.empty(embedding_size, num_classes))
        nn.init.normal_(self.kernel, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=1) @ F.normalize(self.kernel, dim=0)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(embeddings).clamp(-1 + 1e-7, 1 - 1e-7)
        if labels is None:
            return self.s * cos
        rows = torch.arange(len(labels), device=cos.device)
        cos = cos.clone()
        cos[rows, labels] = self.target_logit(cos[rows, labels])
        return self.s * cos


class ArcFace(_CosineHead):
    """Additive angular margin: s cos(theta_y + m) (s = 64, m = 0.5)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5):
        super().__init__(embedding_size, num_classes, s, m)
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th, self.mm = math.cos(math.pi - m), math.sin(math.pi - m) * m

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        sin_target = torch.sqrt((1.0 - cos_target * cos_target).clamp_min(0.0))
        with_margin = cos_target * self.cos_m - sin_target * self.sin_m
        return torch.where(cos_target > self.th, with_margin, cos_target - self.mm)


class CosFace(_CosineHead):
    """Additive cosine margin: s (cos theta_y - m) (s = 64, m = 0.35)."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(embedding_size, num_classes, s, m)

    def target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.m


class SoftmaxHead(nn.Module):
    """A linear classifier on the embedding; the labels are ignored."""

    def __init__(self, embedding_size: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(embedding_size, num_classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(embeddings)


HEADS = {"arcface": ArcFace, "cosface": CosFace, "softmax": SoftmaxHead}


def make_head(name: str, embedding_size: int, num_classes: int, s: float | None = None,
              m: float | None = None) -> nn.Module:
    """A head by name; `s`/`m` override the paper defaults of the margin heads."""
    if name not in HEADS:
        raise ValueError(f"face_recognition.head: unknown head {name!r}; known: {', '.join(HEADS)}")
    if name == "softmax":
        return SoftmaxHead(embedding_size, num_classes)
    kwargs = {k: v for k, v in (("s", s), ("m", m)) if v is not None}
    return HEADS[name](embedding_size, num_classes, **kwargs)


__all__ = ["HEADS", "ArcFace", "CosFace", "SoftmaxHead", "make_head"]
