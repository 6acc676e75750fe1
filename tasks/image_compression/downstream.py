"""The downstream classifier: accuracy on decoded images, and phi of the perception-consistency term.

Any torchvision classifier with weights from a local path serves (`load_classifier`, through the
core's `load_teacher`: nothing downloads). For the embedded default, `embedded_classifier` trains a
torchvision ResNet-18 on the generated shapes set (Lightning, Adam, cosine schedule, flips and
rotations) and saves its weights next to the set, so later runs load it instead of training.
Inputs are images in [0, 1] normalised with ImageNet's mean and std (`perception.Normalized`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.engine.registry import ConfigError
from tasks.image_compression.data import Labelled
from tasks.image_compression.evaluate import downstream
from tasks.image_compression.perception import Classifier

#: how the embedded classifier is trained (part of its cache key)
EMBEDDED_RECIPE = {"name": "resnet18", "epochs": 15, "batch_size": 32, "optimizer": "adam", "lr": 1e-3,
                   "weight_decay": 0.0, "seed": 0}


class _FloatImages(Dataset):
    """(uint8 image, label) -> (float image in [0, 1], label), with a random flip and 90-degree rotation when
    `augment`."""

    def __init__(self, dataset: Dataset, augment: bool = False):
        self.dataset, self.augment = dataset, augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        x = image.float().div(255.0)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(-2, -1))
        return x, label


def _batch_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    return {"accuracy": float((output.argmax(1) == target).float().mean())}


def train_classifier(model: nn.Module, labelled: Labelled, run_dir: Path, epochs: int = 15, batch_size: int = 32,
                     optimizer: str = "adam", lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
                     seed: int = 0, progress: bool = False, accelerator: str = "cpu") -> Classifier:
    """Train `model` (logits over `labelled.classes`) on `labelled.train` with Lightning (flips and 90-degree
    rotations: the shapes' classes do not change under them); returns it wrapped."""
    import lightning as L

    from core.engine.lightning import SupervisedModule, make_trainer
    from torch.nn.functional import cross_entropy

    L.seed_everything(seed, verbose=False)
    classifier = Classifier(model)
    cfg = {"epochs": epochs, "optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
           "scheduler": "cosine", "grad_clip": 5.0, "accelerator": accelerator, "devices": 1, "strategy": "auto",
           "precision": "32-true", "log_every_n_steps": 10}
    module = SupervisedModule(classifier, cross_entropy, _batch_metrics, cfg)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(_FloatImages(labelled.train, augment=True), batch_size=batch_size, shuffle=True, generator=g)
    val = DataLoader(_FloatImages(labelled.val), batch_size=256)
    make_trainer(cfg, run_dir, progress=progress).fit(module, train, val)
    return classifier.cpu().eval()


def embedded_classifier(labelled: Labelled, progress: bool = False) -> Classifier:
    """The embedded default's classifier: trained once on `labelled` and cached in `labelled.root`."""
    import torchvision

    from core.engine.runs import load_checkpoint, save_checkpoint, write_json

    recipe = dict(EMBEDDED_RECIPE)
    path = Path(labelled.root) / f"{recipe['name']}_classifier.pt"
    meta = {**recipe, "classes": labelled.classes}
    model = torchvision.models.get_model(recipe["name"], weights=None, num_classes=labelled.num_classes)
    if path.is_file():
        payload = load_checkpoint(path)
        if payload.get("meta") == meta:
            model.load_state_dict(payload["state_dict"])
            return Classifier(model).eval()
    print(f"training the downstream classifier ({recipe['name']}) on {labelled.root} once; cached at {path}",
          flush=True)
    classifier = train_classifier(model, labelled, Path(labelled.root) / "classifier_run",
                                  **{k: v for k, v in recipe.items() if k != "name"}, progress=progress)
    save_checkpoint(path, {"state_dict": classifier.model.state_dict(), "meta": meta})
    write_json(path.with_suffix(".json"), {**meta, "val_accuracy": downstream(None, classifier, labelled.val)["accuracy"]})
    return classifier


def load_classifier(spec: Mapping[str, Any] | str, labelled: Labelled | None = None,
                    progress: bool = False) -> Classifier:
    """`"embedded"` (train or load the shapes classifier), or a teacher spec for `core.distill.load_teacher`
    (`{name: resnet50, checkpoint: path.pt, kwargs: {num_classes: 10}}`) plus optional `mean`, `std`
    and `input_size` for its input convention (default ImageNet's mean and std, no resize)."""
    from core.distill import load_teacher

    if spec == "embedded":
        if labelled is None:
            raise ConfigError("image_compression.classifier: 'embedded' needs the generated labelled set "
                              "(data.downstream)")
        return embedded_classifier(labelled, progress)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"image_compression.classifier: expected 'embedded' or a mapping with name and "
                          f"checkpoint, got {spec!r}")
    spec = dict(spec)
    convention = {k: spec.pop(k) for k in ("mean", "std", "input_size") if k in spec}
    return Classifier(load_teacher(spec), **convention).eval()


__all__ = ["train_classifier", "embedded_classifier", "load_classifier", "EMBEDDED_RECIPE"]
