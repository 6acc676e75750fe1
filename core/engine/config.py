"""YAML configs with `_base_` inheritance and `key=value` overrides (OmegaConf).

A config is a tree of sections. Fixed sections (`search`, `train`, ...) are
checked against the dataclasses below and the bounds in `core.engine.validate`;
component sections (`space`, `strategy`, `evaluator`, `data`) name a
registered component and are checked against its signature when built. Every
user mistake raises `ConfigError` with the dotted key, the bad value and what
was expected; a file that is not valid YAML (a duplicate key, a tab, a missing
bracket) is named with its line and column (`file.yaml:3:5: ...`).

An override (or a config over its `_base_`) that gives a component section
another `name` (`data.name=imagefolder`) starts that section afresh: the keys
set for the old component are dropped, so they cannot fail on the new one.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
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
    max_rejected: int = 200


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
SCALARS = {"task": str, "seed": int, "description": str, "threads": int}


def _yaml_error(path: Path, err: yaml.YAMLError) -> ConfigError:
    """`file:line:column: problem` from PyYAML's marks (duplicate keys, tabs, unclosed brackets, ...)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = (getattr(err, "problem", None) or str(err).splitlines()[0]).strip()
    context = getattr(err, "context", None)
    if mark is None:
        return ConfigError(f"{path}: {problem}")
    try:
        line = path.read_text(errors="replace").splitlines()[mark.line]
    except (OSError, IndexError):
        line = ""
    if "\t" in line[:mark.column + 1]:
        problem, context = "a tab character; YAML indents with spaces", None
    context_mark = getattr(err, "context_mark", None)
    if context and context_mark is not None and context_mark is not mark and "duplicate" not in problem:
        problem = f"{problem} ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
    elif context and "duplicate" not in problem:
        problem = f"{problem} ({context})"
    return ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: {problem}")


def _load_yaml(path: Path, chain: tuple[Path, ...] = ()) -> Any:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" if not chain else
                          f"{chain[-1]}: _base_ file not found: {path}")
    if path in chain:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in chain + (path,))}")
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except (OmegaConfBaseException, OSError, ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not OmegaConf.is_dict(cfg):
        kind = "a list" if OmegaConf.is_list(cfg) else "empty" if cfg is None else f"{type(cfg).__name__}"
        raise ConfigError(f"{path}:1:1: a config must be a mapping of sections (key: value ...), this one is {kind}")
    bases = cfg.pop("_base_", None)
    if bases is None:
        return cfg
    if not isinstance(bases, str) and not (OmegaConf.is_list(bases) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: _base_: expected a file name or a list of file names, got {bases!r}")
    merged = OmegaConf.create()
    for base in [bases] if isinstance(bases, str) else list(bases):
        merged = OmegaConf.merge(merged, _load_yaml((path.parent / base).resolve(), chain + (path,)))
    return OmegaConf.merge(_restart_renamed_components(merged, cfg), cfg)


_KEY = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*$")


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> Any:
    """`key=value` items as one OmegaConf tree; every malformed item is named."""
    items = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. search.budget=50)")
        if not _KEY.match(key):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key (e.g. train.epochs)")
        try:
            items.append(OmegaConf.from_dotlist([item]))
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value {value!r} is not valid YAML ({problem})") from None
        except OmegaConfBaseException as err:
            raise ConfigError(f"override {item!r}: {str(err).splitlines()[0]}") from None
    return OmegaConf.merge(*items) if items else OmegaConf.create()


def _restart_renamed_components(cfg: Any, over: Any) -> Any:
    """A component section whose `name` `over` (the overrides, or a config over its base) changes starts from
    that component's defaults: `cfg`'s keys for the old component are dropped."""
    for section in COMPONENT_SECTIONS:
        new = over.get(section) if OmegaConf.is_dict(over) else None
        old = cfg.get(section)
        if not (OmegaConf.is_dict(new) and "name" in new and OmegaConf.is_dict(old)):
            continue
        if old.get("name") != new.get("name"):
            cfg[section] = OmegaConf.create({})
    return cfg


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Load, merge bases, apply `key=value` overrides, check fixed sections; return a plain dict."""
    path = Path(path).resolve()
    cfg = _load_yaml(path)
    over = _parse_overrides(overrides)
    try:
        cfg = OmegaConf.merge(_restart_renamed_components(cfg, over), over)
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        where = getattr(err, "full_key", None) or str(path)
        raise ConfigError(f"{where}: {str(err).splitlines()[0]}") from None
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
    from core.engine.validate import check_ranges, check_run_name

    out = dict(data)
    for name, schema in FIXED_SECTIONS.items():
        section = data.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{name}: expected a mapping, got {section!r}")
        out[name] = dataclasses.asdict(schema(**check_kwargs(schema, section, name)))
    out.setdefault("seed", 0)
    check_run_name(out["run"]["name"])
    check_ranges(out)
    out["_source_"] = source
    return out


def dump_config(cfg: dict[str, Any], path: str | Path) -> None:
    from core.engine.runs import atomic_write_text
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create({k: v for k, v in cfg.items()
                                                                if not (k.startswith("_") and k.endswith("_"))})))
