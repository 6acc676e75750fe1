"""Distillation losses: logits KD, hint (FitNets) with an adapter, attention transfer, MMD / NST.

Each loss exists as a function on tensors and as a term module
(`forward(student, teacher, targets=None)`) that a `Distiller` combines by
name; `DISTILL_LOSSES` maps config names to term classes:

- `kd`: Hinton et al. 2015, `T^2 KL(softmax(t/T) || softmax(s/T))` (+ `ce_weight` CE);
- `ce`: cross-entropy of the student output with the labels;
- `hint` (`mse`, `fitnet`): FitNets (Romero et al., ICLR 2015), MSE to the teacher
  feature through a learnable 1x1-conv adapter when the channel counts differ;
- `at`: attention transfer (Zagoruyko & Komodakis, ICLR 2017), p = 2;
- `mmd`: squared MMD between feature distributions (Gaussian kernel by default);
- `nst`: neuron selectivity transfer (Huang & Wang 2017), `mmd` over channel maps
  with the polynomial kernel;
- `l1`: mean absolute difference (a generator's output against its teacher's);
- `gram` (`style`): MSE of Gram matrices (Johnson et al. 2016), through an adapter
  when channels differ.

GAN losses (standard, LSGAN, PU-GAN) are in `core.distill.gan_losses`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import Registry


# ---------------------------------------------------------------------------------------------
# functions
# ---------------------------------------------------------------------------------------------
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
            targets: torch.Tensor | None = None, ce_weight: float = 0.0) -> torch.Tensor:
    """Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015, sec. 2).

    `T^2 * KL(softmax(t/T) || softmax(s/T))`, the KL averaged over the batch
    (summed over classes); the T^2 factor keeps the soft-target gradients'
    magnitude independent of T (sec. 2). With `ce_weight > 0` and `targets`,
    `ce_weight * CE(s, targets)` is added (the paper's weighted average of the
    two objectives, weights left to the caller).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd: student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if temperature <= 0:
        raise ValueError(f"kd: temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=1)
    loss = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t
    if ce_weight and targets is not None:
        loss = loss + ce_weight * F.cross_entropy(student_logits, targets)
    return loss


def attention_map(feature: torch.Tensor, p: float = 2.0, mean: bool = False) -> torch.Tensor:
    """Spatial attention of a (B, C, H, W) feature: sum_c |A_c|^p (mean over c with `mean`), flattened, L2-normalised.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017, sec. 3.1 (F^p_sum) and eq. 2.
    """
    if feature.dim() != 4:
        raise ValueError(f"at: expected a (batch, channels, height, width) feature, got shape {tuple(feature.shape)}")
    a = feature.abs().pow(p)
    a = a.mean(1) if mean else a.sum(1)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0, mode: str = "paper") -> torch.Tensor:
    """Attention transfer loss (Zagoruyko & Komodakis, ICLR 2017, eq. 2), for one student/teacher pair.

    `mode="paper"`: the mean over the batch of `|| Q_S/||Q_S||_2 - Q_T/||Q_T||_2 ||_2` with
    `Q = vec(sum_c |A_c|^p)` (the term weight plays beta/2). `mode="code"`: the
    authors' implementation (github.com/szagoruyko/attention-transfer, utils.py):
    channel mean instead of sum and the mean of squared differences (used with beta = 1e3).
    Spatial sizes must match (channels may differ).
    """
    if student.shape[-2:] != teacher.shape[-2:]:
        raise ValueError(f"at: spatial sizes differ, student {tuple(student.shape[-2:])} vs teacher "
                         f"{tuple(teacher.shape[-2:])}; tap layers of the same resolution")
    if mode == "paper":
        return (attention_map(student, p) - attention_map(teacher, p)).norm(p=2, dim=1).mean()
    if mode == "code":
        return (attention_map(student, p, mean=True) - attention_map(teacher, p, mean=True)).pow(2).mean()
    raise ValueError(f"at: mode must be 'paper' or 'code', got {mode!r}")


def _kernel(x: torch.Tensor, y: torch.Tensor, kernel: str, sigma: float, degree: int, c: float) -> torch.Tensor:
    """Kernel matrices for batched sample sets x (..., N, D) and y (..., M, D)."""
    if kernel == "gaussian":
        return torch.exp(-torch.cdist(x, y).pow(2) / (2 * sigma * sigma))
    dot = x @ y.transpose(-1, -2)
    if kernel == "polynomial":
        return (dot + c).pow(degree)
    if kernel == "linear":
        return dot
    raise ValueError(f"mmd: kernel must be 'gaussian', 'polynomial' or 'linear', got {kernel!r}")


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str = "gaussian", sigma: float | None = None,
        degree: int = 2, c: float = 0.0, unbiased: bool = False) -> torch.Tensor:
    """Squared maximum mean discrepancy between the sample sets x (..., N, D) and y (..., M, D).

    Gretton et al., "A Kernel Two-Sample Test", JMLR 2012, eq. 3 (biased,
    V-statistic, the default: exactly 0 when the two sets are equal) and eq. 4
    (`unbiased=True`: diagonal terms left out, about 0 for two samples of one
    distribution). Kernels: Gaussian `exp(-||a-b||^2 / (2 sigma^2))` (sigma
    None: the median pairwise distance of the pooled samples), polynomial
    `(a.b + c)^degree`, linear `a.b`. Leading dimensions are batched; the
    result has their shape.
    """
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"mmd: samples have {x.shape[-1]} and {y.shape[-1]} dimensions; they must match")
    if kernel == "gaussian" and sigma is None:
        pooled = torch.cat([x, y], dim=-2).detach()
        dist = torch.cdist(pooled, pooled).flatten(-2)
        sigma_t = dist.median(dim=-1).values.clamp_min(1e-6)
        while sigma_t.dim() < x.dim():
            sigma_t = sigma_t.unsqueeze(-1)
        kxx = torch.exp(-torch.cdist(x, x).pow(2) / (2 * sigma_t * sigma_t))
        kyy = torch.exp(-torch.cdist(y, y).pow(2) / (2 * sigma_t * sigma_t))
        kxy = torch.exp(-torch.cdist(x, y).pow(2) / (2 * sigma_t * sigma_t))
    else:
        kxx = _kernel(x, x, kernel, sigma or 1.0, degree, c)
        kyy = _kernel(y, y, kernel, sigma or 1.0, degree, c)
        kxy = _kernel(x, y, kernel, sigma or 1.0, degree, c)
    n, m = x.shape[-2], y.shape[-2]
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError("mmd: the unbiased estimate needs at least 2 samples on each side")
        sxx = (kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
        syy = (kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    else:
        sxx, syy = kxx.mean((-1, -2)), kyy.mean((-1, -2))
    return sxx + syy - 2 * kxy.mean((-1, -2))


def feature_mmd(student: torch.Tensor, teacher: torch.Tensor, mode: str = "channels", **kernel_args: Any
                ) -> torch.Tensor:
    """MMD between the distributions of a student and a teacher feature, averaged over the batch.

    `mode="channels"` (Huang & Wang, "Like What You Like: Knowledge Distill via
    Neuron Selectivity Transfer", 2017, sec. 3.2): per image, the samples are the
    channels' spatial maps, each L2-normalised, so channel counts may differ and
    spatial sizes must match. `mode="batch"`: the samples are the images'
    flattened features (the distribution over the batch); their sizes must match.
    """
    if mode == "channels":
        if student.dim() != 4 or teacher.dim() != 4 or student.shape[-2:] != teacher.shape[-2:]:
            raise ValueError(f"mmd (channels): need (B, C, H, W) features of one spatial size, got "
                             f"{tuple(student.shape)} and {tuple(teacher.shape)}")
        s = F.normalize(student.flatten(2), dim=2)
        t = F.normalize(teacher.flatten(2), dim=2)
        return mmd(s, t, **kernel_args).mean()
    if mode == "batch":
        return mmd(student.flatten(1), teacher.flatten(1), **kernel_args)
    raise ValueError(f"mmd: mode must be 'channels' or 'batch', got {mode!r}")


# ---------------------------------------------------------------------------------------------
# term modules (what a Distiller combines)
# ---------------------------------------------------------------------------------------------
class DistillTerm(nn.Module):
    """A loss term: `forward(student, teacher, targets=None) -> scalar`.

    `uses_teacher` is False for terms on labels only (`ce`). `needs_setup` is
    True while a term still has to see one student/teacher pair to build its
    parameters (the hint adapter); `setup(student, teacher)` builds them.
    """

    uses_teacher = True

    @property
    def needs_setup(self) -> bool:
        return False

    def setup(self, student: torch.Tensor, teacher: torch.Tensor) -> None:
        pass


class KDTerm(DistillTerm):
    __doc__ = kd_loss.__doc__

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"kd.temperature: expected a number > 0, got {temperature!r}")
        self.temperature, self.ce_weight = float(temperature), float(ce_weight)

    def forward(self, student, teacher, targets=None):
        return kd_loss(student, teacher, self.temperature, targets, self.ce_weight)


class CETerm(DistillTerm):
    """Cross-entropy of the student output with the labels (the hard-target part of KD)."""

    uses_teacher = False

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, student, teacher=None, targets=None):
        if targets is None:
            raise ValueError("ce: this term needs targets; call distiller.loss(output, targets)")
        return F.cross_entropy(student, targets, label_smoothing=self.label_smoothing)


class HintTerm(DistillTerm):
    """FitNets hint loss (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015, sec. 2.2).

    MSE between the teacher's hint feature and the student's guided feature
    passed through a learnable regressor when their channel counts differ: a
    1x1 convolution for (B, C, H, W) maps, a linear layer for (B, C) vectors
    (the paper's regressor is a convolution sized to match; 1x1 is the
    common choice when resolutions already match). The adapter is built from
    `student_channels`/`teacher_channels` when given, else from the first
    pair seen by `Distiller.setup(example_input)`; it is part of the
    distiller's trainable parameters. Deviation: the mean over elements
    (torch's `mse_loss`) instead of the paper's 1/2 sum. `resize=True`
    bilinearly resizes the student map to the teacher's size when they differ.
    `distance: l1` takes the mean absolute difference instead (feature
    matching as GAN distillation uses it).
    """

    def __init__(self, student_channels: int | None = None, teacher_channels: int | None = None,
                 adapter: bool | None = None, resize: bool = False, distance: str = "mse"):
        super().__init__()
        if distance not in ("mse", "l1"):
            raise ValueError(f"hint.distance: expected 'mse' or 'l1', got {distance!r}")
        self.want_adapter = adapter  # None: only when channels differ
        self.resize = bool(resize)
        self.distance = distance
        self.adapter: nn.Module | None = None
        self._ready = False
        if student_channels is not None and teacher_channels is not None:
            self._build(int(student_channels), int(teacher_channels), spatial=True)

    def _build(self, cs: int, ct: int, spatial: bool) -> None:
        if self.want_adapter or (self.want_adapter is None and cs != ct):
            self.adapter = nn.Conv2d(cs, ct, 1) if spatial else nn.Linear(cs, ct)
        elif cs != ct:
            raise ValueError(f"hint: student has {cs} channels and teacher {ct}, and adapter is false")
        self._ready = True

    @property
    def needs_setup(self) -> bool:
        return not self._ready

    def setup(self, student, teacher) -> None:
        if not self._ready:
            self._build(student.shape[1], teacher.shape[1], spatial=student.dim() == 4)
            if self.adapter is not None:
                self.adapter.to(student.device)

    def forward(self, student, teacher, targets=None):
        student = self.adapt(student, teacher)
        return F.mse_loss(student, teacher) if self.distance == "mse" else F.l1_loss(student, teacher)

    def adapt(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """The student feature through the adapter (and resized, with `resize`), checked against the teacher's."""
        if not self._ready:
            if student.shape[1] == teacher.shape[1] and not self.want_adapter:
                self._ready = True
            else:
                raise RuntimeError(
                    f"hint: student has {student.shape[1]} channels and teacher {teacher.shape[1]}; the adapter "
                    "must exist before the optimizer is made: pass student_channels/teacher_channels in the term, "
                    "or example_input to the Distiller")
        if self.adapter is not None:
            if isinstance(self.adapter, nn.Conv2d) and student.dim() == 2:
                raise ValueError("hint: the adapter was built for feature maps but got vectors")
            student = self.adapter(student)
        if student.shape != teacher.shape:
            if self.resize and student.dim() == 4:
                student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear", align_corners=False)
            else:
                raise ValueError(f"hint: student feature {tuple(student.shape)} (after the adapter) and teacher "
                                 f"feature {tuple(teacher.shape)} differ; tap layers of one resolution or set resize")
        return student


class L1Term(DistillTerm):
    """Mean absolute difference of student and teacher tensors (output L1 of GAN distillation:
    Chen et al., "Distilling Portable Generative Adversarial Networks for Image Translation", AAAI 2020)."""

    def forward(self, student, teacher, targets=None):
        if student.shape != teacher.shape:
            raise ValueError(f"l1: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape")
        return F.l1_loss(student, teacher)


def gram_matrix(feature: torch.Tensor) -> torch.Tensor:
    """Per-sample Gram matrix of a (B, C, H, W) feature, F F^T / (C H W) (Johnson et al., "Perceptual Losses
    for Real-Time Style Transfer and Super-Resolution", ECCV 2016, sec. 3.2 style reconstruction loss)."""
    if feature.dim() != 4:
        raise ValueError(f"gram: expected a (batch, channels, height, width) feature, got {tuple(feature.shape)}")
    b, c, h, w = feature.shape
    flat = feature.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


class GramTerm(HintTerm):
    """Style term: MSE between the Gram matrices of student and teacher features (`gram_matrix`).

    The Gram-matrix (style) term of portable GAN distillation (Chen et al.,
    AAAI 2020; the exact form is not known, METHODS.md 3.4: the GAN-Slimming
    reimplementation uses the MSE of Gram matrices of discriminator features,
    weight 1e5). A student feature with fewer channels goes through a learnable
    1x1 adapter first, as in `hint`, so both Gram matrices are C_t x C_t.
    """

    def __init__(self, student_channels: int | None = None, teacher_channels: int | None = None,
                 adapter: bool | None = None, resize: bool = False):
        super().__init__(student_channels, teacher_channels, adapter, resize)

    def forward(self, student, teacher, targets=None):
        student = self.adapt(student, teacher)
        return F.mse_loss(gram_matrix(student), gram_matrix(teacher))


class ATTerm(DistillTerm):
    __doc__ = at_loss.__doc__

    def __init__(self, p: float = 2.0, mode: str = "paper"):
        super().__init__()
        if mode not in ("paper", "code"):
            raise ValueError(f"at.mode: expected 'paper' or 'code', got {mode!r}")
        self.p, self.mode = float(p), mode

    def forward(self, student, teacher, targets=None):
        return at_loss(student, teacher, self.p, self.mode)


class MMDTerm(DistillTerm):
    __doc__ = feature_mmd.__doc__

    def __init__(self, mode: str = "channels", kernel: str = "gaussian", sigma: float | None = None,
                 degree: int = 2, c: float = 0.0, unbiased: bool = False):
        super().__init__()
        if mode not in ("channels", "batch"):
            raise ValueError(f"mmd.mode: expected 'channels' or 'batch', got {mode!r}")
        if kernel not in ("gaussian", "polynomial", "linear"):
            raise ValueError(f"mmd.kernel: expected 'gaussian', 'polynomial' or 'linear', got {kernel!r}")
        self.mode = mode
        self.kernel_args = dict(kernel=kernel, sigma=sigma, degree=degree, c=c, unbiased=unbiased)

    def forward(self, student, teacher, targets=None):
        return feature_mmd(student, teacher, self.mode, **self.kernel_args)


class NSTTerm(MMDTerm):
    """Neuron selectivity transfer (Huang & Wang 2017, sec. 3.3): channel-map MMD, polynomial kernel d=2, c=0."""

    def __init__(self, kernel: str = "polynomial", degree: int = 2, c: float = 0.0, sigma: float | None = None):
        super().__init__("channels", kernel, sigma, degree, c)


#: config name -> term class; tasks may register more (GAN losses, ...)
DISTILL_LOSSES = Registry("distillation loss")
"""Config names -> term classes; a task or a user registers more with `DISTILL_LOSSES.register(name, cls)`."""

for _name, _term in (("kd", KDTerm), ("ce", CETerm), ("hint", HintTerm), ("mse", HintTerm), ("fitnet", HintTerm),
                     ("at", ATTerm), ("mmd", MMDTerm), ("nst", NSTTerm), ("l1", L1Term), ("gram", GramTerm),
                     ("style", GramTerm)):
    DISTILL_LOSSES.register(_name, _term)
