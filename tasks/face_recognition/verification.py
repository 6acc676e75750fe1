"""Face verification: insightface `.bin` pair files, the 10-fold protocol, TAR@FAR and the ROC curve.

`.bin` (insightface `eval/verification.py::load_bin`): a pickle of
`(bins, issame_list)`, where `bins` holds 2N encoded images (pair i is images
2i and 2i+1) and `issame_list` N booleans. LFW, AgeDB-30, CFP-FP, CALFW and
CPLFW ship in this form with the insightface training sets.

10-fold accuracy (insightface `calculate_roc`, the LFW "unrestricted"
protocol of Huang et al. 2007): embeddings are L2-normalised (the sum of the
image's and its horizontal flip's embedding, as insightface's flip test),
a pair's distance is the squared Euclidean distance, the pairs are cut into
10 consecutive folds (scikit-learn `KFold`, no shuffle); for each fold the
threshold in `arange(0, 4, 0.01)` with the best accuracy on the other nine
folds is applied to it; the reported accuracy is the mean (and std) of the
ten fold accuracies.

TAR@FAR: over all pairs of a list, the fraction of genuine pairs accepted at
the similarity threshold where the fraction of impostor pairs accepted is
`far` (interpolated on scikit-learn's ROC, as insightface's IJB evaluation).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.engine.data import DataError
from core.engine.report import save_figure

THRESHOLDS = np.arange(0, 4, 0.01)


# -- .bin files -------------------------------------------------------------------------------------------------
def read_bin(path: str | Path) -> tuple[list[bytes], list[bool]]:
    """`(bins, issame_list)` of a pair file, read with a restricted unpickler (lists of bytes and bools only:
    a file naming any other global is refused, never run)."""
    from core.engine.safe_pickle import BYTES_AND_BOOLS, safe_load

    path = Path(path)
    what = "insightface verification .bin (pickle of (bins, issame_list))"
    data = safe_load(path, BYTES_AND_BOOLS, what, encoding="bytes")
    if not isinstance(data, (tuple, list)) or len(data) != 2 or not all(isinstance(d, (tuple, list)) for d in data):
        raise DataError(f"{path}: not a {what}: it holds a {type(data).__name__}")
    bins, issame = data
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)):
            raise DataError(f"{path}: entry {i} is a {type(b).__name__}, not encoded image bytes")
    for i, s in enumerate(issame):
        if not isinstance(s, (bool, int)):
            raise DataError(f"{path}: pair label {i} is a {type(s).__name__}, not a bool")
    bins = [bytes(b) for b in bins]
    issame = [bool(s) for s in issame]
    if len(bins) != 2 * len(issame):
        raise DataError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected two images per pair)")
    return bins, issame


def write_bin(path: str | Path, bins: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write `(bins, issame_list)` the way insightface's pair files are pickled (protocol 2 for old readers)."""
    from core.engine.runs import atomic_write_bytes

    if len(bins) != 2 * len(issame):
        raise ValueError(f"write_bin: {len(bins)} images for {len(issame)} pairs")
    atomic_write_bytes(path, pickle.dumps((list(bins), [bool(s) for s in issame]), protocol=2))


class VerificationSet(Dataset):
    """The 2N images of a pair file as normalised tensors (`(x / 255 - 0.5) / 0.5`, insightface), resized to
    `image_size` when they differ; `issame` holds the N pair labels."""

    def __init__(self, path: str | Path, image_size: int = 112, name: str | None = None):
        from tasks.face_recognition.recordio import decode_image

        self.path = Path(path)
        self.name = name or self.path.stem
        bins, self.issame = read_bin(self.path)
        images = [decode_image(b, f"{self.path}: entry {i}") for i, b in enumerate(bins)]
        x = torch.from_numpy(np.stack([_resize(im, image_size) for im in images])).permute(0, 3, 1, 2)
        self.images = x.float().div(255.0).sub(0.5).div(0.5)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], int(self.issame[i // 2])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


# -- embeddings -------------------------------------------------------------------------------------------------
@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256, flip: bool = True) -> np.ndarray:
    """L2-normalised embeddings; with `flip`, of the sum of the image's and its mirror's embedding."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            e = model(x)
            if flip:
                e = e + model(torch.flip(x, dims=[3]))
            out.append(torch.nn.functional.normalize(e.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


# -- the protocol -----------------------------------------------------------------------------------------------
def _accuracy(threshold: float, dist: np.ndarray, issame: np.ndarray) -> float:
    return float(np.mean((dist < threshold) == issame))


def ten_fold_accuracy(dist: np.ndarray, issame: Sequence[bool], folds: int = 10,
                      thresholds: np.ndarray = THRESHOLDS) -> dict[str, float]:
    """10-fold verification on pair distances: per fold, the best threshold on the other folds is applied to it.

    Returns mean and std of the fold accuracies and the mean best threshold.
    """
    from sklearn.model_selection import KFold

    dist, issame = np.asarray(dist, dtype=np.float64), np.asarray(issame, dtype=bool)
    if len(dist) != len(issame) or len(dist) < folds:
        raise ValueError(f"ten_fold_accuracy: {len(dist)} distances for {len(issame)} pairs, {folds} folds")
    accs, best = [], []
    for train, test in KFold(n_splits=folds, shuffle=False).split(dist):
        train_acc = [_accuracy(t, dist[train], issame[train]) for t in thresholds]
        t = thresholds[int(np.argmax(train_acc))]
        best.append(t)
        accs.append(_accuracy(t, dist[test], issame[test]))
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "threshold": float(np.mean(best))}


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of each (2i, 2i+1) pair."""
    return np.sum((embeddings[0::2] - embeddings[1::2]) ** 2, axis=1)


def tar_at_far(similarity: np.ndarray, issame: Sequence[bool], fars: Sequence[float]) -> dict[float, float]:
    """True accept rate at each false accept rate, from the ROC of the similarities (higher = same)."""
    from sklearn.metrics import roc_curve

    issame = np.asarray(issame, dtype=bool)
    if issame.all() or not issame.any():
        raise ValueError("tar_at_far: need both genuine and impostor pairs")
    fpr, tpr, _ = roc_curve(issame, similarity)
    return {float(far): float(np.interp(far, fpr, tpr)) for far in fars}


def evaluate_pairs(embeddings: np.ndarray, issame: Sequence[bool], fars: Sequence[float] = (1e-3, 1e-4),
                   folds: int = 10) -> dict[str, float]:
    """The verification row of one pair list: 10-fold accuracy (+- std), threshold, TAR@FAR."""
    dist = pair_distances(embeddings)
    row = ten_fold_accuracy(dist, issame, folds)
    for far, tar in tar_at_far(-dist, issame, fars).items():
        row[f"tar@far={far:g}"] = tar
    return row


def roc_plot(path: str | Path, curves: dict[str, tuple[np.ndarray, Sequence[bool]]]) -> None:
    """One ROC curve (TAR vs FAR, log FAR axis) per benchmark; `curves[name] = (distances, issame)`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc, roc_curve

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (dist, issame) in curves.items():
        fpr, tpr, _ = roc_curve(np.asarray(issame, dtype=bool), -np.asarray(dist))
        ax.plot(np.maximum(fpr, 1e-6), tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, dpi=120)


__all__ = [
    "THRESHOLDS",
    "VerificationSet",
    "embed",
    "evaluate_pairs",
    "pair_distances",
    "read_bin",
    "roc_plot",
    "tar_at_far",
    "ten_fold_accuracy",
    "write_bin",
]
