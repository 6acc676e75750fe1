"""The remote-sensing task: multi-source pixel classification with learnable group convolution (DGConv).

Yang et al., "Single-Stream CNN With Learnable Architecture for Multisource
Remote Sensing Data", IEEE TGRS 60, 2022 (arXiv 2109.06094). One network over
the stacked sources; its DGConv layers learn their channel grouping during
training (`core.ops.dgconv`).

Training (the official recipe, `train` section + `remote_sensing` options):
class-weighted cross-entropy (weights 1 - n_c / N over the training targets),
unlabelled pixels ignored in tiles; SGD with momentum or Adam, no weight decay
on the gates; `train.scheduler: multistep` divides the learning rate by 10 at
`remote_sensing.lr_milestones` (epochs), as the official MUUFL runs
([200, 240] of 300); `cosine` and `none` as elsewhere. The DGConv
regulariser Σ 2^(K + Σg) joins the loss with `regularizer_weight` (0, as
the official training, which computes it and never uses it). Deviation: the
official tile loss divides the weighted sum by the number of labelled pixels;
we use PyTorch's weighted mean (divided by the sum of the weights).

Testing predicts every pixel of the test scene (patch mode: the window around
each pixel; tile mode: non-overlapping tiles, the last ones clamped to the
border) and scores the labelled test pixels: OA, AA, kappa, per-class
accuracy, confusion matrix. With a run folder it writes `class_map.tif` (the
scene's CRS and transform), `class_map.png` (legend), `confusion_matrix.png`,
`per_class.csv`, and for networks with DGConv layers `groups.csv` and
`groups_per_layer.png`, plus the derived static network (`core.ops.to_static`):
its params and MACs, its largest output difference from the trained network,
and `static_model.onnx` checked in onnxruntime (`export_static`).

Config section `remote_sensing:` (`RSOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.engine.registry import DATASETS, TASKS, ConfigError
from core.task import Task
from core.ops.dgconv import DGConv2d, FGConv2d, dgconv_regularizer
from core.api import Arch, SearchSpace
from tasks.remote_sensing.data import RSDataSplits
from tasks.remote_sensing.metrics import Accumulator, evaluate
from tasks.remote_sensing.models import CONVS


@dataclass
class RSOptions:
    """`regularizer_weight`: weight of Σ 2^(K+Σg) in the loss; `class_weighted`: 1 - n_c/N class weights;
    `lr_milestones` / `lr_gamma`: the multistep schedule (epochs); `replicates`: the seeds
    `python -m tasks.remote_sensing.replicates` runs (the paper's 42-46); `predict_batch`: patches per
    forward pass when predicting a map; `export_static`: write and check the static network's ONNX."""

    regularizer_weight: float = 0.0
    class_weighted: bool = True
    lr_milestones: list = field(default_factory=list)
    lr_gamma: float = 0.1
    replicates: list = field(default_factory=lambda: [42, 43, 44, 45, 46])
    predict_batch: int = 512
    export_static: bool = True

    def __post_init__(self):
        if self.regularizer_weight < 0:
            raise ConfigError(f"remote_sensing.regularizer_weight: expected >= 0, got {self.regularizer_weight}")
        if not self.replicates or not all(isinstance(s, int) for s in self.replicates):
            raise ConfigError(f"remote_sensing.replicates: expected a list of integer seeds, got {self.replicates}")


def build_optimizer(model: nn.Module, cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (momentum, no Nesterov, as the official code) or Adam; the gates never get weight decay."""
    gates = [p for n, p in model.named_parameters() if n.endswith(".gate") and p.requires_grad]
    gate_ids = {id(p) for p in gates}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in gate_ids]
    groups = [{"params": weights, "weight_decay": cfg["weight_decay"]}]
    if gates:
        groups.append({"params": gates, "weight_decay": 0.0})
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
    if cfg["optimizer"] in ("adam", "adamw"):
        return (torch.optim.Adam if cfg["optimizer"] == "adam" else torch.optim.AdamW)(groups, lr=cfg["lr"])
    raise ConfigError(f"train.optimizer: expected sgd, adam or adamw, got {cfg['optimizer']!r}")


def make_scheduler(opt: torch.optim.Optimizer, cfg: dict[str, Any], milestones: list, gamma: float,
                   steps_per_epoch: int):
    """(scheduler, interval) for `train.scheduler`: multistep (epochs), cosine (steps) or none."""
    kind = cfg["scheduler"]
    if kind == "none":
        return None, None
    if kind == "multistep":
        if not milestones:
            raise ConfigError("remote_sensing.lr_milestones: train.scheduler multistep needs epochs, e.g. [200, 240]")
        return torch.optim.lr_scheduler.MultiStepLR(opt, [int(m) for m in milestones], gamma), "epoch"
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg["epochs"] * steps_per_epoch)), "step"
    raise ConfigError(f"train.scheduler: expected multistep, cosine or none, got {kind!r}")


class RSModule(L.LightningModule):
    """Lightning glue: the task's loss per training batch, OA/AA/kappa over the validation set per epoch."""

    def __init__(self, task: "RemoteSensingTask", model: nn.Module, num_classes: int, train_cfg: dict[str, Any],
                 steps_per_epoch: int):
        super().__init__()
        self.task, self.model, self.num_classes = task, model, num_classes
        self.train_cfg, self.steps_per_epoch = train_cfg, steps_per_epoch
        self._acc: Accumulator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        loss, parts = self.task.loss(self.model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch[1]))
        return loss

    def on_validation_epoch_start(self):
        self._acc = Accumulator(self.num_classes)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._acc.update(self.model(x), y)

    def on_validation_epoch_end(self):
        m = self._acc.compute()
        for name in ("oa", "aa", "kappa"):
            self.log(f"val/{name}", m[name], prog_bar=name == "oa")

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.train_cfg)
        options = self.task.options
        sched, interval = make_scheduler(opt, self.train_cfg, options.lr_milestones, options.lr_gamma,
                                         self.steps_per_epoch)
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": interval}}


@TASKS.register("remote_sensing")
class RemoteSensingTask(Task):
    name = "remote_sensing"
    table_metrics = ("oa", "aa", "kappa")
    metrics = ("oa", "aa", "kappa")
    primary_metric = "oa"
    Options = RSOptions
    collate = None

    def __init__(self, cfg: dict[str, Any]):
        super().__init__(cfg)
        self._class_weights: torch.Tensor | None = None
        self._num_classes: int | None = None

    # -- components ---------------------------------------------------------------------------------
    def data(self) -> RSDataSplits:
        section = self.cfg.get("data")
        if not section:
            raise ConfigError("data: missing section; e.g. data: {name: rs_embedded}")
        if "seed" in section:
            raise ConfigError("data.seed: set the top-level seed (it redraws the training pixels per replicate)")
        splits = DATASETS.build(section, "data", seed=int(self.cfg.get("seed", 0)))
        if not isinstance(splits, RSDataSplits):
            raise ConfigError(f"data.name: {section['name']!r} is not a remote-sensing dataset; use rs_files or "
                              "rs_embedded")
        self._class_weights = splits.class_weights()
        self._num_classes = splits.num_classes
        return splits

    def build_context(self, data: RSDataSplits) -> dict[str, Any]:
        return {"in_channels": data.input_shape[0], "num_classes": data.num_classes,
                "source_split": list(data.source_split)}

    def example_input(self, data: RSDataSplits) -> torch.Tensor:
        return torch.zeros(1, *data.input_shape)

    def evaluator_section(self) -> dict[str, Any]:
        """The config's `evaluator` section; by default `rs_train` (class-weighted, labelled pixels only)."""
        section = dict(self.cfg.get("evaluator") or {"name": "rs_train"})
        section.pop("timeout_s", None)
        return section

    def companions(self, model: nn.Module, data: RSDataSplits) -> dict[str, nn.Module]:
        return {}

    def baseline(self, name: str, space: SearchSpace, data: RSDataSplits, searched: Arch | None = None) -> Arch:
        """`dgconv`, `plain`, `fgconv`: the hand-set network (the space's default widths and depth)."""
        if name not in CONVS:
            raise ConfigError(f"retrain.baselines: unknown baseline {name!r}; known: {', '.join(CONVS)}")
        try:
            return space.with_conv(name)
        except ValueError as err:
            raise ConfigError(f"retrain.baselines: {err}") from None

    # -- the contract's loss and score ------------------------------------------------------------
    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Class-weighted cross-entropy over labelled targets (+ the weighted DGConv regulariser)."""
        x, y = batch
        weight = self._class_weights if self.options.class_weighted else None
        if weight is not None:
            weight = weight.to(x.device)
        ce = F.cross_entropy(model(x), y, weight=weight, ignore_index=-1)
        parts = {"ce": ce.detach(), "n": len(y)}
        if self.options.regularizer_weight > 0:
            reg = dgconv_regularizer(model).to(ce.device)
            parts["regularizer"] = reg.detach()
            ce = ce + self.options.regularizer_weight * reg
        return ce, parts

    def score(self, model: nn.Module, loader) -> dict[str, float]:
        num_classes = self._num_classes or _infer_classes(model)
        m = evaluate(model, loader, num_classes)
        return {"oa": m["oa"], "aa": m["aa"], "kappa": m["kappa"]}

    # -- training ------------------------------------------------------------------------------------
    def train(self, model: nn.Module, data: RSDataSplits, run_dir: Path, progress: bool = True) -> dict[str, float]:
        """Train with Lightning (the `train` section); returns the last validation OA, AA and kappa."""
        from core.engine.lightning import make_trainer

        self._class_weights = data.class_weights()
        self._num_classes = data.num_classes
        cfg = self.cfg["train"]
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        train_loader = self.loader(data.train, cfg["batch_size"], shuffle=True, seed=int(self.cfg.get("seed", 0)),
                                   num_workers=cfg["num_workers"])
        val_loader = self.loader(data.val, self.cfg["test"]["batch_size"], num_workers=cfg["num_workers"])
        module = RSModule(self, model, data.num_classes, cfg, len(train_loader))
        trainer = make_trainer(cfg, run_dir, progress=progress)
        trainer.fit(module, train_loader, val_loader)
        return {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    # -- testing -------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_map(self, model: nn.Module, data: RSDataSplits) -> np.ndarray:
        """Predicted class numbers (1..N) for every pixel of the test scene."""
        model.eval()
        scene = data.test_scene
        cube = torch.from_numpy(scene.cube)
        h, w = scene.shape
        out = np.zeros((h, w), np.int64)
        if data.mode == "patch":
            size, pad = data.window, data.window // 2
            padded = data.test.padded  # the test scene's padded cube
            # all windows of one row band at a time, batched
            rows_per_batch = max(1, self.options.predict_batch // w)
            for r0 in range(0, h, rows_per_batch):
                r1 = min(h, r0 + rows_per_batch)
                band = padded[:, r0:r1 + 2 * pad]
                windows = band.unfold(1, size, 1).unfold(2, size, 1)  # C x rows x cols x size x size
                batch = windows.permute(1, 2, 0, 3, 4).reshape(-1, cube.shape[0], size, size)
                out[r0:r1] = model(batch.contiguous()).argmax(dim=1).reshape(r1 - r0, w).numpy() + 1
        else:
            from tasks.remote_sensing.data import tile_corners

            size = data.window
            for top, left in tile_corners(h, w, size, size):
                tile = cube[None, :, top:top + size, left:left + size]
                out[top:top + size, left:left + size] = model(tile).argmax(dim=1)[0].numpy() + 1
        return out

    def test(self, model: nn.Module, data: RSDataSplits, run_dir: Path | None = None) -> dict[str, float]:
        prediction = self.predict_map(model, data)
        labelled = data.test_labels > 0
        acc = Accumulator(data.num_classes)
        acc.update(torch.from_numpy(prediction[labelled] - 1), torch.from_numpy(data.test_labels[labelled] - 1))
        m = acc.compute()
        out = {"oa": m["oa"], "aa": m["aa"], "kappa": m["kappa"]}
        out.update({f"acc_{i + 1}": v for i, v in enumerate(m["per_class"])})
        if any(isinstance(x, (DGConv2d, FGConv2d)) for x in model.modules()):
            out.update(self.static_summary(model, data, run_dir))
        if run_dir is not None:
            self._write_outputs(model, data, Path(run_dir), prediction, m)
        return out

    def static_summary(self, model: nn.Module, data: RSDataSplits, run_dir: Path | None) -> dict[str, float]:
        """Params and MACs of the derived static network, its largest output difference from `model` on
        test samples, and (with a run folder) the onnxruntime-checked `static_model.onnx`."""
        from core.cost import count_macs, count_params
        from core.ops.static_groups import to_static

        model.eval()
        static = to_static(model).eval()
        example = self.example_input(data)
        probe = torch.stack([data.test[i][0] for i in range(min(8, len(data.test)))])
        with torch.no_grad():
            diff = float((static(probe) - model(probe)).abs().max())
        out = {"static_params": float(count_params(static)), "static_macs": float(count_macs(static, example)),
               "static_max_diff": diff}
        if run_dir is not None and self.options.export_static:
            try:
                from core.engine.export import export_onnx
            except ImportError:  # pragma: no cover - the export extra is missing
                return out
            try:
                out["static_onnx_diff"] = export_onnx(static, example, Path(run_dir) / "static_model.onnx")
            except ImportError:
                pass  # onnxruntime is not installed: nothing to check the export with
        return out

    def _write_outputs(self, model: nn.Module, data: RSDataSplits, run_dir: Path, prediction: np.ndarray,
                       m: dict) -> None:
        from core.engine.report import write_csv
        from core.ops.static_groups import group_report
        from tasks.remote_sensing.outputs import plot_class_map, plot_confusion, plot_groups, write_class_map

        scene = data.test_scene
        write_class_map(run_dir / "class_map.tif", prediction, scene.crs, scene.transform, data.num_classes)
        plot_class_map(run_dir / "class_map.png", prediction, data.class_names,
                       f"predicted classes, OA {100 * m['oa']:.2f} %")
        plot_confusion(run_dir / "confusion_matrix.png", m["confusion"], data.class_names)
        rows = [{"class": i + 1, "name": name, "accuracy": m["per_class"][i], "test_pixels": int(sum(m["confusion"][i]))}
                for i, name in enumerate(data.class_names)]
        write_csv(run_dir / "per_class.csv", rows, ["class", "name", "accuracy", "test_pixels"])
        report = [r for r in group_report(model) if r["kind"] == "DGConv2d"]
        if report:
            columns = ["layer", "in", "out", "K", "gates_on", "groups", "blocks", "density", "unused_inputs",
                       "unreached_outputs"]
            write_csv(run_dir / "groups.csv", report, columns)
            plot_groups(run_dir / "groups_per_layer.png", report)


def _infer_classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


__all__ = ["RSOptions", "RemoteSensingTask", "build_optimizer", "make_scheduler"]
