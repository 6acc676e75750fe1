"""Teachers: torchvision, timm, the project's own and user-registered models with a local checkpoint, and a
teacher split into stages.

`load_teacher(spec)` takes a plain config value:

    "resnet50"                                        # torchvision name, random weights (a warning-free test stub)
    {name: resnet50, checkpoint: ckpt/r50.pth}       # torchvision.models.get_model(name, weights=None) + local weights
    {name: "timm:tf_efficientnet_b7", checkpoint: ...}   # timm, when installed (extra `teachers`)
    {name: small_cnn, kwargs: {widths: [32, 48, 64]}}    # a teacher registered by name (TEACHERS)

Teachers come from registries only, never from an import path in a config (a
`module:callable` name would let a config run any code). The names a config
can use: torchvision's models, timm's (`timm:<name>`, when timm is installed),
the project's teachers and models (`TEACHERS`, `MODELS`: `small_cnn`,
`digits_cnn`, ...), and whatever a user registers from Python:

    from core.distill import register_teacher
    register_teacher("my_resnet", build_my_resnet)   # then `teacher: {name: my_resnet, kwargs: {...}}`

Nothing downloads: torchvision models are built with `weights=None` and timm
models with `pretrained=False`; weights come from `checkpoint`, loaded with
`torch.load(weights_only=True)`. A checkpoint is a state dict, or a dict holding
one under `state_dict`, `model`, `model_state_dict`, `net` or `module` (or the key
named by `state_dict_key`); a `module.` prefix (DataParallel) and the `prefix`
given (e.g. `model.` for Lightning modules) are stripped.

`StagedTeacher(model, stages)` names the module paths whose outputs end the
teacher's stages (`["layer1", "layer2", "layer3", "layer4"]` for a torchvision
ResNet, `["features.2", ..., "features.7"]` for torchvision's EfficientNet) and
returns those outputs from one forward pass, stopping as soon as the last one
needed has run. It is how DNA's blockwise distillation sees a teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.distill.taps import Taps, resolve_module
from core.engine.registry import MODELS, TEACHERS, ConfigError, check_kwargs
from core.engine.runs import load_checkpoint

_STATE_KEYS = ("state_dict", "model", "model_state_dict", "net", "module", "ema", "model_ema")
_SPEC_KEYS = {"name", "checkpoint", "kwargs", "strict", "state_dict_key", "prefix"}


def register_teacher(name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Make `builder(**kwargs) -> nn.Module` available to configs as `teacher: {name: <name>, kwargs: {...}}`."""
    return TEACHERS.register(name, builder)


def _timm():
    try:
        import timm
    except ImportError:
        return None
    return timm


def _resolve(name: str, key: str) -> tuple[str, Callable[..., nn.Module] | str]:
    """(source, builder or model name) for a teacher name, without building anything."""
    source, sep, target = name.partition(":")
    if sep and source == "timm":
        timm = _timm()
        if timm is None:
            raise ConfigError(f"{key}.name: {name!r} needs timm, which is not installed "
                              "(pip install 'archforge[teachers]' or pip install timm)")
        if not timm.is_model(target):
            raise ConfigError(f"{key}.name: {target!r} is not a timm model")
        return "timm", target
    if sep and source == "torchvision":
        name = target
    elif sep:
        raise ConfigError(f"{key}.name: {name!r} is an import path; a config never names code to import. "
                          "Use a torchvision model (resnet50), 'timm:<name>', a registered teacher "
                          f"({', '.join(TEACHERS.names()) or 'none'}), or register your own from Python with "
                          "core.distill.register_teacher(name, builder)")
    if not sep and name in TEACHERS:
        return "registry", TEACHERS.get(name)
    if not sep and name in MODELS:
        return "registry", MODELS.get(name)
    import torchvision

    if name not in torchvision.models.list_models():
        raise ConfigError(f"{key}.name: {name!r} is not a torchvision model or a registered teacher "
                          f"({', '.join(TEACHERS.names()) or 'none'}); use a torchvision name (resnet50, "
                          "efficientnet_b7, ...), 'timm:<name>', or register_teacher(name, builder) from Python")
    return "torchvision", name


def _build(name: str, kwargs: dict[str, Any], key: str = "teacher") -> nn.Module:
    source, target = _resolve(name, key)
    try:
        if source == "timm":
            model = _timm().create_model(target, pretrained=False, **kwargs)
        elif source == "torchvision":
            import torchvision

            model = torchvision.models.get_model(target, weights=None, **kwargs)
        else:
            model = target(**check_kwargs(target, kwargs, f"{key}.kwargs"))
    except TypeError as err:
        raise ConfigError(f"{key}.kwargs: {name!r} does not take {kwargs!r} ({str(err).splitlines()[0]})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}.name: {name!r} built a {type(model).__name__}, not an nn.Module")
    return model


def check_teacher_spec(spec: Any, key: str = "teacher") -> None:
    """Check a teacher spec's keys and name (and, for registered teachers, its kwargs) without building it,
    so a config with a bad teacher fails before any work is spent."""
    if spec is None or isinstance(spec, nn.Module):
        return
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"{key}: expected a model name or a mapping with name (and checkpoint, kwargs), "
                          f"got {spec!r}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; a teacher takes {', '.join(sorted(_SPEC_KEYS))}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{key}.kwargs: expected a mapping, got {kwargs!r}")
    source, target = _resolve(str(spec["name"]), key)
    if source == "registry":
        check_kwargs(target, kwargs, f"{key}.kwargs", provided=())
    if spec.get("checkpoint") and not Path(str(spec["checkpoint"])).expanduser().is_file():
        raise FileNotFoundError(f"{key}.checkpoint: file not found: {Path(str(spec['checkpoint'])).expanduser()}")


def _state_dict(payload: Any, path: Path, key: str | None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(payload, Mapping) or key not in payload:
            keys = list(payload)[:10] if isinstance(payload, Mapping) else type(payload).__name__
            raise ConfigError(f"teacher.state_dict_key: checkpoint {path} has no key {key!r}; it has {keys}")
        payload = payload[key]
    elif isinstance(payload, Mapping) and not all(isinstance(v, torch.Tensor) for v in payload.values()):
        for k in _STATE_KEYS:
            if isinstance(payload.get(k), Mapping):
                payload = payload[k]
                break
        else:
            raise ConfigError(f"teacher.checkpoint: {path} holds neither a state dict nor one under "
                              f"{', '.join(_STATE_KEYS)} (keys: {list(payload)[:10]}); set teacher.state_dict_key")
    if not isinstance(payload, Mapping):
        raise ConfigError(f"teacher.checkpoint: {path} holds a {type(payload).__name__}, not a state dict")
    return dict(payload)


def _strip(state: dict[str, torch.Tensor], prefix: str | None) -> dict[str, torch.Tensor]:
    for p in ([prefix] if prefix else []) + ["module."]:
        if state and all(k.startswith(p) for k in state):
            state = {k[len(p):]: v for k, v in state.items()}
    return state


def load_state(model: nn.Module, checkpoint: str | Path, strict: bool = True, state_dict_key: str | None = None,
               prefix: str | None = None) -> nn.Module:
    """Load a local checkpoint (weights_only) into `model`; every error names the file."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"teacher.checkpoint: file not found: {path}")
    payload = load_checkpoint(path, "teacher.checkpoint")
    state = _strip(_state_dict(payload, path, state_dict_key), prefix)
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ConfigError(f"teacher.checkpoint: {path} does not fit {type(model).__name__}: "
                          f"{str(e).splitlines()[0]} {' '.join(str(e).split()[1:40])}") from None
    if not strict and (result.missing_keys or result.unexpected_keys):
        import warnings

        warnings.warn(f"teacher checkpoint {path}: {len(result.missing_keys)} missing and "
                      f"{len(result.unexpected_keys)} unexpected keys", stacklevel=2)
    return model


def load_teacher(spec: str | Mapping[str, Any] | nn.Module, freeze: bool = True, key: str = "teacher") -> nn.Module:
    """Build a teacher from `spec` (see the module docstring), load its checkpoint, freeze it in eval mode.
    `key` is the spec's place in the config, for error messages (e.g. `strategy.teacher`)."""
    if isinstance(spec, nn.Module):
        model = spec
    else:
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ConfigError(f"{key}: expected a model name or a mapping with name (and checkpoint, kwargs), "
                              f"got {spec!r}")
        unknown = sorted(set(spec) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown key; a teacher takes {', '.join(sorted(_SPEC_KEYS))}")
        kwargs = dict(spec.get("kwargs") or {})
        model = _build(str(spec["name"]), kwargs, key)
        if spec.get("checkpoint"):
            load_state(model, spec["checkpoint"], strict=spec.get("strict", True),
                       state_dict_key=spec.get("state_dict_key"), prefix=spec.get("prefix"))
    if freeze:
        freeze_teacher(model)
    return model


def freeze_teacher(model: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm uses its running statistics, dropout is off) and no gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _StopForward(Exception):
    pass


class StagedTeacher(nn.Module):
    """A teacher seen as a chain of stages, each ending at one of `stages` (module paths in forward order).

    `forward(x, upto=None)` returns `[f_0, ..., f_upto]`, the outputs of the
    stage-end modules, computed in one pass of the whole teacher that stops
    right after stage `upto` (later layers never run). The teacher is frozen
    and kept in eval mode, whatever `train()` is called with.
    """

    def __init__(self, model: nn.Module, stages: Sequence[str], freeze: bool = True):
        super().__init__()
        if isinstance(stages, str) or not stages:
            raise ConfigError(f"teacher_stages: expected a non-empty list of module paths, got {stages!r}")
        for path in stages:
            resolve_module(model, path, "teacher_stages")
        self.model = freeze_teacher(model) if freeze else model
        self.stages = tuple(stages)
        self._taps = Taps(model, self.stages)
        self._stop_handles = []

    def __len__(self) -> int:
        return len(self.stages)

    def train(self, mode: bool = True) -> "StagedTeacher":
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        upto = len(self.stages) - 1 if upto is None else upto
        if not 0 <= upto < len(self.stages):
            raise IndexError(f"stage {upto} of a teacher with {len(self.stages)} stages")

        def stop(*_):
            raise _StopForward

        handle = resolve_module(self.model, self.stages[upto]).register_forward_hook(stop)
        self._taps.clear()
        try:
            self.model(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        recorded = self._taps.pop(missing_ok=True)
        missing = [p for p in self.stages[:upto + 1] if p not in recorded]
        if missing:
            raise RuntimeError(f"teacher_stages: {missing} did not run before {self.stages[upto]!r}; list the stage "
                               "module paths in the order the teacher's forward pass runs them")
        return [recorded[p] for p in self.stages[:upto + 1]]

    def shapes(self, example: torch.Tensor) -> list[tuple[int, ...]]:
        """Per-stage output shapes (batch dimension dropped) for `example`."""
        return [tuple(f.shape[1:]) for f in self(example)]


class SmallCNN(nn.Module):
    """A plain staged CNN (conv-BN-ReLU, two per stage) for tiny-data teachers: `stem`, `stages.<i>`, `head`.

    Stage i has `widths[i]` channels and stride `strides[i]` in its first conv.
    Its stage paths for `StagedTeacher` are `stage_paths()` (after each stage's last ReLU) or
    `preactivation_paths()` (before it).
    """

    def __init__(self, widths: Sequence[int] = (32, 48, 64), strides: Sequence[int] = (1, 2, 2),
                 in_channels: int = 1, num_classes: int = 10, stem_channels: int = 16, convs_per_stage: int = 2):
        super().__init__()

        def cbr(cin, cout, stride):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.stem = nn.Sequential(*cbr(in_channels, stem_channels, 1))
        stages, cin = [], stem_channels
        for width, stride in zip(widths, strides, strict=True):
            layers = cbr(cin, width, stride)
            for _ in range(convs_per_stage - 1):
                layers += cbr(width, width, 1)
            stages.append(nn.Sequential(*layers))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    def stage_paths(self) -> list[str]:
        return [f"stages.{i}" for i in range(len(self.stages))]

    def preactivation_paths(self) -> list[str]:
        """The last BatchNorm of every stage: the stage's output before its last ReLU, where a block that ends in a
        linear projection or a sum of paths (DNA's MBConv students, a cell201 cell) sits in the data flow."""
        paths = []
        for i, stage in enumerate(self.stages):
            last_bn = max(k for k, m in enumerate(stage) if isinstance(m, nn.BatchNorm2d))
            paths.append(f"stages.{i}.{last_bn}")
        return paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


register_teacher("small_cnn", SmallCNN)
