"""Run folders, atomic writes and seeding."""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """`torch.save` atomically (a killed run never leaves a truncated checkpoint)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def save_epoch_state(path: str | Path, fmt: str, space: Any, epoch: int, history: list,
                     extra: dict[str, Any] | None = None, **stateful: Any) -> None:
    """A searcher's state after `epoch` epochs: every object with a `state_dict` (model, optimizers, scheduler),
    plus `extra` plain values (a penalty weight, screened candidates)."""
    save_checkpoint(path, {"format": fmt, "space": type(space).__name__, "epoch": epoch, "history": history,
                           **(extra or {}), **{name: obj.state_dict() for name, obj in stateful.items()}})


def resume_epoch_state(path: str | Path | None, fmt: str, space: Any, what: str, epochs: int,
                       **stateful: Any) -> tuple[int, list, dict[str, Any]]:
    """Load what `save_epoch_state` wrote into `stateful`; (epoch to start at, history, the whole payload for
    extra values). (0, [], {}) without a file.

    A file of another format or space is refused with the path, rather than silently trained over.
    """
    if not (path and Path(path).is_file()):
        return 0, [], {}
    payload = load_checkpoint(path)
    if payload.get("format") != fmt or payload.get("space") != type(space).__name__:
        raise ValueError(f"strategy.checkpoint: {path} is not a {what} checkpoint of {type(space).__name__}; "
                         f"use another path")
    for name, obj in stateful.items():
        obj.load_state_dict(payload[name])
    return min(int(payload["epoch"]), epochs), [dict(row) for row in payload.get("history", [])], payload


#: environment variables that mark a process of a distributed training (set by Lightning, torchrun, SLURM)
_RANK_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID")


def make_run_dir(cfg: dict[str, Any], kind: str) -> Path:
    """`runs/<config name>/<time>-<kind>/`, unique even when two runs start in the same second.

    A process of a distributed training (`LOCAL_RANK`, `RANK`, `NODE_RANK` or `SLURM_PROCID`
    set) that finds `ARCHFORGE_RUN_DIR` uses that folder instead: `archforge train` puts its run
    folder there before Lightning's DDP launcher re-runs the command, so the other processes write
    to it too; under torchrun or SLURM, set it for all processes.
    """
    shared = os.environ.get("ARCHFORGE_RUN_DIR")
    if shared and any(v in os.environ for v in _RANK_VARIABLES):
        path = Path(shared)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return _new_run_dir(cfg, kind)


def _new_run_dir(cfg: dict[str, Any], kind: str) -> Path:
    name = cfg["run"].get("name") or Path(cfg.get("_source_", "run")).stem
    base = Path(cfg["run"]["dir"]) / name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (f"{stamp}-{kind}" if i == 0 else f"{stamp}-{kind}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {base}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
