"""Train a derived network with basicsr's own training script and YAML options.

    python -m tasks.super_resolution.basicsr_train -opt options.yml [basicsr's flags]

imports this package (so `TrilevelSRNet` is in basicsr's `ARCH_REGISTRY`) and
runs `basicsr.train.train_pipeline` with the current directory as basicsr's
root (experiments/, tb_logger/ are made there). `basicsr_options(...)` writes a
minimal option dict for an arch: basicsr's `SRModel`, `PairedImageDataset`
(HR and LR folders in its layout), L1, Adam, MultiStepLR, PSNR/SSIM on Y with
the scale as border crop; edit it as any basicsr YAML.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def basicsr_options(arch: Mapping[str, Any], scale: int, num_feat: int, train_hr: str, train_lr: str,
                    val_hr: str | None = None, val_lr: str | None = None, name: str = "TrilevelSRNet",
                    filename_tmpl: str = "{}", gt_size: int = 96, batch_size: int = 16, total_iter: int = 300000,
                    lr: float = 2e-4, num_gpu: int = 0, res_scale: float = 0.2) -> dict[str, Any]:
    """A basicsr training option dict (as its YAML) for the derived network of `arch`."""
    datasets: dict[str, Any] = {"train": {
        "name": "train", "type": "PairedImageDataset", "dataroot_gt": train_hr, "dataroot_lq": train_lr,
        "filename_tmpl": filename_tmpl, "io_backend": {"type": "disk"}, "gt_size": gt_size, "use_hflip": True,
        "use_rot": True, "num_worker_per_gpu": 0, "batch_size_per_gpu": batch_size, "dataset_enlarge_ratio": 1,
        "prefetch_mode": None}}
    if val_hr and val_lr:
        datasets["val"] = {"name": "val", "type": "PairedImageDataset", "dataroot_gt": val_hr, "dataroot_lq": val_lr,
                           "filename_tmpl": filename_tmpl, "io_backend": {"type": "disk"}}
    options: dict[str, Any] = {
        "name": name, "model_type": "SRModel", "scale": scale, "num_gpu": num_gpu, "manual_seed": 0,
        "datasets": datasets,
        "network_g": {"type": "TrilevelSRNet", "upscale": scale, "num_feat": num_feat, "arch": dict(arch),
                      "res_scale": res_scale},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {"ema_decay": 0, "optim_g": {"type": "Adam", "lr": lr, "weight_decay": 0, "betas": [0.9, 0.99]},
                  "scheduler": {"type": "MultiStepLR", "milestones": [total_iter // 2], "gamma": 0.5},
                  "total_iter": total_iter, "warmup_iter": -1,
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}},
        "logger": {"print_freq": 100, "save_checkpoint_freq": max(1, total_iter // 10), "use_tb_logger": False,
                   "wandb": {"project": None, "resume_id": None}},
        "dist_params": {"backend": "nccl", "port": 29500},
    }
    if "val" in datasets:
        options["val"] = {"val_freq": max(1, total_iter // 10), "save_img": False, "metrics": {
            "psnr": {"type": "calculate_psnr", "crop_border": scale, "test_y_channel": True},
            "ssim": {"type": "calculate_ssim", "crop_border": scale, "test_y_channel": True}}}
    return options


def main() -> None:
    import tasks.super_resolution  # noqa: F401  (TrilevelSRNet into basicsr's ARCH_REGISTRY)
    from tasks.super_resolution._basicsr import basicsr  # noqa: F401  (the torchvision shim, if needed)
    from basicsr.train import train_pipeline

    train_pipeline(os.getcwd())


if __name__ == "__main__":
    main()
