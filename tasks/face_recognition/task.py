"""The face recognition task: margin-loss training (with plain or multi-step KD) and verification testing.

Training (Boutros et al., "PocketNet", sec. IV-A; official `train_*.py`):
the embedding network feeds a margin head over identities (ArcFace s=64,
m=0.5 by default; CosFace; softmax), SGD with momentum 0.9 and weight
decay 5e-4 on network and head, gradient norm clipped at 5 (`train.grad_clip`).
With `face_recognition.teacher` the loss adds `kd_weight` (100) x the MSE of
the normalised embeddings (`distill`); a teacher with `epochs:` is followed
epoch by epoch (multi-step KD). Each epoch's weights go to
`run/epochs/epoch_XXX.pt`, so any run can be the teacher of a multi-step one.
The validation pairs (`data.val_target`) are scored with the 10-fold protocol
after every epoch.

Testing writes, next to the checkpoint: `verification.csv` (one row per
benchmark: 10-fold accuracy +- std, threshold, TAR@FAR), `roc.png` and
`embeddings.npz` (each benchmark's normalised embeddings and pair labels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from core.engine.data import DataSplits
from core.engine.lightning import all_ranks, build_optimizer, interleave_ranks, make_trainer, with_schedule
from core.engine.registry import TASKS, ConfigError
from core.task import Task, batches_on
from core.api import Arch, SearchSpace
from tasks.face_recognition.distill import (
    TeacherSchedule,
    build_teacher,
    pocketnet_kd_loss,
    save_epoch_checkpoint,
)
from tasks.face_recognition.heads import HEADS, make_head
from tasks.face_recognition.space import FaceSearchNetwork
from tasks.face_recognition.verification import (
    embed,
    evaluate_pairs,
    pair_distances,
    roc_plot,
    ten_fold_accuracy,
)


@dataclass
class FaceOptions:
    """The `face_recognition:` config section."""

    head: str = "arcface"
    s: float | None = None
    m: float | None = None
    embedding_size: int | None = None
    teacher: dict | None = None
    kd_weight: float = 100.0
    save_epochs: bool = True
    flip_test: bool = True
    fars: list = field(default_factory=lambda: [1e-3, 1e-4])
    export_embeddings: bool = True


def _embedding_size(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    was = model.training
    model.eval()
    with torch.no_grad():
        size = int(model(torch.zeros(2, *input_shape)).shape[1])
    model.train(was)
    return size


class FaceModule(L.LightningModule):
    """Embedding network + margin head (+ a teacher outside the module's parameters) for Lightning."""

    def __init__(self, model: nn.Module, head: nn.Module, train_cfg: dict[str, Any],
                 teacher: TeacherSchedule | None = None, kd_weight: float = 100.0, flip_test: bool = True):
        super().__init__()
        self.model, self.head = model, head
        self.train_cfg, self.kd_weight, self.flip_test = train_cfg, kd_weight, flip_test
        self._teacher = [teacher]  # a list: keep the teacher out of the module's parameters and checkpoints
        self._val: list[torch.Tensor] = []
        self._issame: list[torch.Tensor] = []

    @property
    def teacher(self) -> TeacherSchedule | None:
        return self._teacher[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        if self.teacher is not None:
            self.teacher.load(self.current_epoch).to(self.device)

    def training_step(self, batch, batch_idx):
        x, y = batch
        emb = self.model(x)
        target = None
        if self.teacher is not None:
            with torch.no_grad():
                target = self.teacher.teacher(x)
        loss, parts = pocketnet_kd_loss(self.head(emb, y), y, emb, target, self.kd_weight)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val, self._issame = [], []

    def validation_step(self, batch, batch_idx):
        x, issame = batch
        e = self.model(x)
        if self.flip_test:
            e = e + self.model(torch.flip(x, dims=[3]))
        self._val.append(torch.nn.functional.normalize(e.float(), dim=1).cpu())
        self._issame.append(issame.cpu())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val:
            return
        n = len(self.trainer.val_dataloaders.dataset)  # pairs are consecutive images: reassemble all ranks' parts
        emb = interleave_ranks(all_ranks(torch.cat(self._val)), n).numpy()
        issame = interleave_ranks(all_ranks(torch.cat(self._issame)), n).numpy()[0::2].astype(bool)
        if len(issame) < 10:
            return
        row = ten_fold_accuracy(pair_distances(emb), issame)
        self.log("val/accuracy", row["accuracy"], prog_bar=True)
        self.log("val/threshold", row["threshold"])

    def configure_optimizers(self):
        opt = build_optimizer(list(self.model.parameters()) + list(self.head.parameters()), self.train_cfg)
        return with_schedule(opt, self.train_cfg, int(self.trainer.estimated_stepping_batches))


class EpochCheckpoints(L.Callback):
    """Save the embedding network after every training epoch: `folder/epoch_XXX.pt` (1-based)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def on_train_epoch_end(self, trainer, module) -> None:
        save_epoch_checkpoint(self.folder, trainer.current_epoch + 1, module.model)


class MarginModel(nn.Module):
    """An embedding network and the margin head over identities that trains with it (the task's trainable);
    `forward` gives the embedding."""

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.net, self.head = net, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@TASKS.register("face_recognition")
class FaceRecognitionTask(Task):
    name = "face_recognition"
    primary_metric = "accuracy"
    metrics = ("accuracy", "threshold")
    table_metrics = ("accuracy",)
    Options = FaceOptions

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        if self.options.head not in HEADS:
            raise ConfigError(f"face_recognition.head: unknown head {self.options.head!r}; known: {', '.join(HEADS)}")
        if self.options.teacher is not None and not isinstance(self.options.teacher, dict):
            raise ConfigError(f"face_recognition.teacher: expected a mapping, got {self.options.teacher!r}")

    def build_context(self, data: DataSplits) -> dict[str, Any]:
        return {"in_channels": data.input_shape[0], "num_classes": data.num_classes,
                "input_size": data.input_shape[1]}

    # -- the task contract ---------------------------------------------------------------------------------
    def trainable(self, model: nn.Module, data: DataSplits) -> nn.Module:
        """The embedding network with a fresh margin head over the training identities; the PocketNet search
        network, which ends in its own softmax classifier (the paper's search), trains as it is."""
        if isinstance(model, FaceSearchNetwork):
            return model
        opts = self.options
        emb = opts.embedding_size or _embedding_size(model, data.input_shape)
        return MarginModel(model, make_head(opts.head, emb, data.num_classes, opts.s, opts.m))

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Cross-entropy of the margin logits (ArcFace by default), or of the search network's class logits."""
        x, y = batch
        logits = model.head(model.net(x), y) if isinstance(model, MarginModel) else model(x)
        return F.cross_entropy(logits, y), {"n": len(y)}

    def score(self, model: nn.Module, loader) -> dict[str, float]:
        """10-fold verification accuracy (and its threshold) on a loader of (image, issame) pair images."""
        was = model.training
        model.eval()
        out, same = [], []
        with torch.no_grad():
            for x, issame in batches_on(loader, model):
                e = model(x)
                if self.options.flip_test:
                    e = e + model(torch.flip(x, dims=[3]))
                out.append(F.normalize(e.float(), dim=1).cpu())
                same.append(issame.cpu())
        model.train(was)
        issame = torch.cat(same).numpy()[0::2].astype(bool)
        if len(issame) < 10:
            raise ValueError(f"face verification needs at least 10 pairs to score, got {len(issame)}")
        row = ten_fold_accuracy(pair_distances(torch.cat(out).numpy()), issame)
        return {"accuracy": float(row["accuracy"]), "threshold": float(row["threshold"])}

    def baseline(self, name: str, space: SearchSpace, data: DataSplits, searched: Arch | None = None) -> Arch:
        """A published genotype by name (`PocketNet`) in a PocketNet space."""
        arch_of = getattr(space, "arch_of", None)
        if arch_of is None:
            raise ConfigError(f"retrain.baselines: baseline {name!r} needs a pocketnet space")
        try:
            return arch_of(name)
        except ValueError as err:
            raise ConfigError(f"retrain.baselines: {err}") from None

    def _loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        g = torch.Generator().manual_seed(self.cfg["seed"])
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g if shuffle else None,
                          num_workers=self.cfg["train"]["num_workers"], drop_last=shuffle)

    def make_teacher(self, data: DataSplits) -> TeacherSchedule | None:
        if not self.options.teacher:
            return None
        defaults = {k: v for k, v in self.build_context(data).items() if k != "num_classes"}
        return build_teacher(self.options.teacher, defaults)

    def train(self, model: nn.Module, data: DataSplits, run_dir: Path, progress: bool = True,
              teacher: TeacherSchedule | None = None) -> dict[str, float]:
        cfg, opts = self.cfg["train"], self.options
        teacher = teacher if teacher is not None else self.make_teacher(data)
        if teacher is not None:
            teacher.check(cfg["epochs"])
        emb = opts.embedding_size or _embedding_size(model, data.input_shape)
        head = make_head(opts.head, emb, data.num_classes, opts.s, opts.m)
        module = FaceModule(model, head, cfg, teacher, opts.kd_weight, opts.flip_test)
        trainer = make_trainer(cfg, run_dir, progress=progress)
        if opts.save_epochs:
            trainer.callbacks.append(EpochCheckpoints(Path(run_dir) / "epochs"))
        trainer.fit(module, self._loader(data.train, True, cfg["batch_size"]),
                    self._loader(data.val, False, self.cfg["test"]["batch_size"]))
        self.head = head
        return {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    def verify(self, model: nn.Module, data: DataSplits) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """One verification row per benchmark, and each benchmark's embeddings."""
        from tqdm.auto import tqdm

        from core.supernet.spos import progress_enabled

        sets = getattr(data, "verification", None) or {"test": data.test}
        rows, embeddings = [], {}
        for name, pairs in tqdm(sets.items(), desc="verification", unit="benchmark", total=len(sets),
                                disable=not progress_enabled(True), dynamic_ncols=True):
            emb = embed(model, pairs.images, self.cfg["test"]["batch_size"], self.options.flip_test)
            rows.append({"benchmark": name, "pairs": len(pairs.issame),
                         **evaluate_pairs(emb, pairs.issame, self.options.fars)})
            embeddings[name] = emb
        return rows, embeddings

    def test(self, model: nn.Module, data: DataSplits, run_dir: Path | None = None) -> dict[str, float]:
        from core.engine.report import table, write_csv

        rows, embeddings = self.verify(model, data)
        metrics: dict[str, float] = {}
        for row in rows:
            for key, value in row.items():
                if key not in ("benchmark", "pairs"):
                    metrics[f"{row['benchmark']}_{key}"] = float(value)
        metrics["accuracy"] = float(np.mean([r["accuracy"] for r in rows]))
        if run_dir is not None:
            run_dir = Path(run_dir)
            columns = list(rows[0])
            write_csv(run_dir / "verification.csv", rows, columns)
            sets = getattr(data, "verification", None) or {"test": data.test}
            roc_plot(run_dir / "roc.png", {n: (pair_distances(embeddings[n]), sets[n].issame) for n in embeddings})
            if self.options.export_embeddings:
                np.savez_compressed(run_dir / "embeddings.npz",
                                    **{f"{n}_embeddings": e for n, e in embeddings.items()},
                                    **{f"{n}_issame": np.asarray(sets[n].issame) for n in embeddings})
            print("\nverification (10-fold accuracy, TAR@FAR):\n" + table(rows, columns), flush=True)
            print(f"outputs: {run_dir}/verification.csv, roc.png"
                  + (", embeddings.npz" if self.options.export_embeddings else ""), flush=True)
        return metrics


__all__ = ["EpochCheckpoints", "FaceModule", "FaceOptions", "FaceRecognitionTask"]
