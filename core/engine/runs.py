"""Run folders, atomic writes and seeding."""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


class CheckpointError(ValueError):
    """A file that is not a checkpoint this suite can read safely (random bytes, text, another program's pickle)."""


def load_checkpoint(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` on CPU. A file that is not a weights-only checkpoint raises
    `CheckpointError` with one line naming `key` and the path (never torch's advice to drop `weights_only`)."""
    import pickle
    import re
    import zipfile

    path = Path(path)
    where = f"{key}: " if key else ""
    if not path.is_file():
        raise FileNotFoundError(f"{where}checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OSError, zipfile.BadZipFile, UnicodeDecodeError, MemoryError, OverflowError) as err:
        text = str(err)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            reason = f"it would call {found.group(1)}, which a weights-only load refuses"
        elif isinstance(err, EOFError) or "Ran out of input" in text:
            reason = "it is empty or cut short"
        elif "failed finding central directory" in text or "PytorchStreamReader" in text:
            reason = "a damaged or cut-short zip archive"
        else:
            reason = "not a PyTorch checkpoint"
        raise CheckpointError(f"{where}{path} is not a checkpoint archforge can read ({reason})") from None


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
    payload = load_checkpoint(path, "strategy.checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != fmt or payload.get("space") != type(space).__name__:
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
    from core.engine.validate import check_run_name

    check_run_name(cfg["run"].get("name"))
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
