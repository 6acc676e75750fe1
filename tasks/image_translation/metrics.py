"""Image translation metrics, all through torchmetrics.

- Paired data: PSNR and SSIM per image (data range 1, on [0, 1] images), and
  MS-SSIM (the standard 5 scales, Gaussian kernel 11) where both image sides
  exceed 160 px, the smallest size its 4 downsamplings leave a kernel room for;
  smaller images get no MS-SSIM rather than a non-standard one.
- Distribution distances: FID and KID (`torchmetrics.image.FrechetInceptionDistance`,
  `KernelInceptionDistance`) on InceptionV3 pool features when the user gives
  the weights file (`metrics.inception_weights`: torch-fidelity's
  `pt_inception-2015-12-05` state dict, as torchmetrics loads it); nothing
  downloads. Without it, the same Frechet and kernel distances are computed on a
  feature extractor the user names (`metrics.feature_extractor`) and labelled
  with it, `fd_<extractor>` and `kd_<extractor>`, never "FID":
  - `photo_classifier`: a small CNN trained here to tell which bundled photograph
    a 64-px colour tile comes from (the embedded data's 10 photographs), its
    64-d pooled features; trained once, deterministically, and cached;
  - `{name: torchvision, arch: resnet18, weights: PATH}`: a torchvision
    classifier with local weights (loaded `weights_only`), its pooled features.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import ConfigError

MS_SSIM_MIN_SIDE = 161


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] network images to [0, 1]."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images to uint8 RGB (one channel repeated), what the feature extractors read."""
    x = (to_unit(x) * 255.0).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


@torch.no_grad()
def paired_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR, SSIM (and MS-SSIM when the images are large enough) of [-1, 1] batches."""
    from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure,
                                               peak_signal_noise_ratio, structural_similarity_index_measure)

    p, t = to_unit(pred), to_unit(target)
    out = {"psnr": peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3)),
           "ssim": structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")}
    if min(p.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        out["ms_ssim"] = multiscale_structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    return {k: v.reshape(-1) for k, v in out.items()}


# -- feature extractors ------------------------------------------------------------------------
class PhotoClassifier(nn.Module):
    """A small CNN over 64-px RGB tiles; `features` are its 64-d pooled features (what distances use)."""

    num_features = 64

    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers, c = [], 3
        for width in (16, 32, 64, 64):
            layers += [nn.Conv2d(c, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
            c = width
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class UInt8Features(nn.Module):
    """uint8 RGB images -> features of `model.features` after [0, 1] scaling, normalisation and resizing."""

    def __init__(self, model: nn.Module, size: int | None = None, mean: tuple | None = None, std: tuple | None = None,
                 num_features: int | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = size
        self.register_buffer("mean", torch.tensor(mean or (0.5, 0.5, 0.5)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or (0.5, 0.5, 0.5)).view(1, 3, 1, 1))
        if num_features:
            self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if self.size and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model.features((x - self.mean) / self.std).flatten(1)


def train_photo_classifier(steps: int = 400, seed: int = 0) -> PhotoClassifier:
    """Train `PhotoClassifier` on the embedded train tiles' colour images to name their source photograph."""
    from tasks.image_translation.data import load_embedded_tiles

    tiles = load_embedded_tiles("colorize")
    keep = tiles["split"] == 0
    images = torch.from_numpy(tiles["b"][keep]).float().div(127.5).sub(1.0)
    labels = torch.from_numpy(tiles["photo"][keep].astype("int64"))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PhotoClassifier(int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    with torch.enable_grad():  # also when `test` asks for it inside a no-grad evaluation
        for _ in range(steps):
            idx = torch.randint(len(images), (32,), generator=g)
            x = images[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def photo_classifier(steps: int = 400) -> nn.Module:
    """The `photo_classifier` extractor, trained once and cached (a weights-only state dict)."""
    from core.engine.data import cache_dir
    from core.engine.runs import load_checkpoint, save_checkpoint

    path = cache_dir("image_translation") / f"photo_classifier_{steps}.pt"
    model = PhotoClassifier()
    if path.is_file():
        model.load_state_dict(load_checkpoint(path)["state_dict"])
    else:
        state = train_photo_classifier(steps).state_dict()
        save_checkpoint(path, {"state_dict": state})
        model.load_state_dict(state)
    return UInt8Features(model.eval(), num_features=PhotoClassifier.num_features)


def torchvision_extractor(arch: str, weights: str, size: int = 224) -> nn.Module:
    """A torchvision classifier with weights from a local file (weights_only), its pooled features."""
    import torchvision

    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"metrics.feature_extractor.weights: file not found: {path}")
    try:
        model = torchvision.models.get_model(arch)
    except ValueError:
        raise ConfigError(f"metrics.feature_extractor.arch: unknown torchvision model {arch!r}") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("state_dict", state) if isinstance(state, Mapping) else state)
    head = next(name for name in ("fc", "classifier", "head", "heads") if hasattr(model, name))
    setattr(model, head, nn.Identity())
    model.features = model.forward  # UInt8Features calls .features
    return UInt8Features(model, size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def inception_extractor(weights: str) -> nn.Module:
    """torchmetrics' InceptionV3 (torch-fidelity's FID network, 2048-d pool features) with local weights.

    The file is read here with `weights_only=True` (torch-fidelity itself would unpickle it without
    restriction); torch-fidelity then loads the checked bytes.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"metrics.inception_weights: file not found: {path}")
    data = path.read_bytes()
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unsafe or unreadable file is refused the same way
        raise ConfigError(f"metrics.inception_weights: {path} is not a weights-only state dict ({err})") from None
    return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                              feature_extractor_weights_path=io.BytesIO(data))


def make_extractor(cfg: Mapping[str, Any]) -> tuple[nn.Module, str] | None:
    """(feature module, label) from the `metrics` options, or None when no distribution distance is asked for.

    Label "inception" means FID/KID; any other label names the extractor."""
    if cfg.get("inception_weights"):
        return inception_extractor(cfg["inception_weights"]), "inception"
    spec = cfg.get("feature_extractor")
    if not spec:
        return None
    if spec == "photo_classifier" or (isinstance(spec, Mapping) and spec.get("name") == "photo_classifier"):
        return photo_classifier(), "photo_classifier"
    if isinstance(spec, Mapping) and spec.get("name") == "torchvision":
        unknown = set(spec) - {"name", "arch", "weights", "size"}
        if unknown or "arch" not in spec or "weights" not in spec:
            raise ConfigError("metrics.feature_extractor: torchvision takes arch, weights (a local file) and size; "
                              f"got {dict(spec)!r}")
        return torchvision_extractor(spec["arch"], spec["weights"], int(spec.get("size", 224))), \
            f"torchvision_{spec['arch']}"
    raise ConfigError(f"metrics.feature_extractor: expected photo_classifier or {{name: torchvision, arch, weights}}, "
                      f"got {spec!r}")


class DistributionDistance:
    """Frechet and kernel distances between generated and target images on one feature extractor.

    `compute()` returns {"fid", "kid"} for InceptionV3 and {"fd_<label>", "kd_<label>"} otherwise
    (KID with subsets of min(`kid_subset_size`, number of images))."""

    def __init__(self, extractor: nn.Module, label: str, kid_subset_size: int = 50, kid_subsets: int = 100):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        import warnings

        self.label = label
        self.fd = FrechetInceptionDistance(feature=extractor)
        with warnings.catch_warnings():  # KID keeps every feature vector: what it needs, and few at this size
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kd = KernelInceptionDistance(feature=extractor, subsets=kid_subsets, subset_size=kid_subset_size)
        self.kid_subset_size = kid_subset_size
        self.count = 0

    @torch.no_grad()
    def update(self, fake: torch.Tensor, real: torch.Tensor) -> None:
        """Add [-1, 1] generated and target batches."""
        f, r = to_uint8_rgb(fake), to_uint8_rgb(real)
        self.fd.update(r, real=True)
        self.fd.update(f, real=False)
        self.kd.update(r, real=True)
        self.kd.update(f, real=False)
        self.count += len(f)

    def compute(self) -> dict[str, float]:
        names = ("fid", "kid") if self.label == "inception" else (f"fd_{self.label}", f"kd_{self.label}")
        self.kd.subset_size = min(self.kid_subset_size, self.count)
        kid_mean, _ = self.kd.compute()
        return {names[0]: float(self.fd.compute()), names[1]: float(kid_mean)}



@torch.no_grad()
def score_generator(model: nn.Module, dataset, batch_size: int = 16, device: str = "cpu") -> dict[str, float]:
    """Mean PSNR, SSIM (and MS-SSIM when large enough) and L1 of `model` over a paired dataset."""
    from torch.utils.data import DataLoader

    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x, y = x.to(device), y.to(device)
        out = model(x)
        for k, v in paired_metrics(out, y).items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
        sums["l1"] = sums.get("l1", 0.0) + float((out - y).abs().mean((1, 2, 3)).sum())
        n += len(x)
    return {k: v / max(n, 1) for k, v in sums.items()}


__all__ = ["paired_metrics", "to_unit", "to_uint8_rgb", "PhotoClassifier", "UInt8Features", "photo_classifier",
           "train_photo_classifier", "torchvision_extractor", "inception_extractor", "make_extractor",
           "DistributionDistance", "MS_SSIM_MIN_SIDE", "score_generator"]
