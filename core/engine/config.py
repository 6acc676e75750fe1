"""YAML configs with `_base_` inheritance and `key=value` overrides (OmegaConf).

A config is a tree of sections. Fixed sections (`search`, `train`, ...) are
checked against the dataclasses below; component sections (`space`,
`strategy`, `evaluator`, `data`) name a registered component and are checked
against its signature when built. Every user mistake raises `ConfigError`
with the dotted key, the bad value and what was expected.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.engine.registry import ConfigError, check_kwargs


@dataclass
class RunConfig:
    dir: str = "runs"
    name: str | None = None


@dataclass
class SearchConfig:
    budget: int = 30
    batch_size: int = 1
    executor: Any = "serial"          # a name, or {name: process|ray, ...} (core.executors)
    tell_order: str = "submission"    # or "completion" (core.search)
    journal_durability: str = "full"


@dataclass
class ObjectiveConfig:
    metric: str = "accuracy"
    direction: str = "max"
    constraints: list = field(default_factory=list)
    pareto: list = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 4e-5
    scheduler: str = "cosine"
    label_smoothing: float = 0.0
    grad_clip: float = 5.0
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    num_workers: int = 0
    log_every_n_steps: int = 10
    arch: str | None = None


@dataclass
class TestConfig:
    checkpoint: str | None = None
    batch_size: int = 256


@dataclass
class ExportConfig:
    checkpoint: str | None = None
    formats: list = field(default_factory=lambda: ["onnx", "torchscript"])
    opset: int = 17
    atol: float = 1e-4


@dataclass
class ProfileConfig:
    arch: str | None = None
    batch: int = 1
    threads: int = 1
    repeats: int = 50


@dataclass
class RetrainConfig:
    enabled: bool = False
    baselines: list = field(default_factory=list)


FIXED_SECTIONS = {"run": RunConfig, "search": SearchConfig, "objective": ObjectiveConfig, "train": TrainConfig,
                  "test": TestConfig, "export": ExportConfig, "profile": ProfileConfig, "retrain": RetrainConfig}
COMPONENT_SECTIONS = ("data", "space", "strategy", "evaluator")
SCALARS = {"task": str, "seed": int, "description": str}


def _load_yaml(path: Path, chain: tuple[Path, ...] = ()) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path in chain:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    bases = cfg.pop("_base_", None) if isinstance(cfg, dict) or OmegaConf.is_dict(cfg) else None
    if bases is None:
        return cfg
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _load_yaml((path.parent / base).resolve(), chain + (path,)))
    return OmegaConf.merge(merged, cfg)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Load, merge bases, apply `key=value` overrides, check fixed sections; return a plain dict."""
    path = Path(path).resolve()
    cfg = _load_yaml(path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return validate(data, source=str(path))


def validate(data: dict[str, Any], source: str = "config") -> dict[str, Any]:
    known = set(FIXED_SECTIONS) | set(COMPONENT_SECTIONS) | set(SCALARS) | {"baselines", "_source_"}
    task = data.get("task")
    if isinstance(task, str) and task:
        known.add(task)  # the task's own section (e.g. `super_resolution: {scale: 2}`), checked by the task
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{key}: unknown top-level key in {source}; known: {', '.join(sorted(known))}")
        if key in SCALARS and value is not None and not isinstance(value, SCALARS[key]):
            raise ConfigError(f"{key}: expected {SCALARS[key].__name__}, got {value!r}")
        if key in COMPONENT_SECTIONS and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping with a 'name', got {value!r}")
        if key == task and value is not None and not isinstance(value, dict):
            raise ConfigError(f"{key}: the task's section must be a mapping, got {value!r}")
    out = dict(data)
    for name, schema in FIXED_SECTIONS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: expected a mapping, got {section!r}")
        out[name] = dataclasses.asdict(schema(**check_kwargs(schema, section, name)))
    out.setdefault("seed", 0)
    out["_source_"] = source
    return out


def dump_config(cfg: dict[str, Any], path: str | Path) -> None:
    from core.engine.runs import atomic_write_text
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in cfg.items() if k != "_source_"})))
