"""Named registries: configs name components, tasks register them on import.

`build(section, key)` checks the section's keys against the component's
signature, so a typo in a config fails with the key's full path instead of a
TypeError deep inside a constructor.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a config: the message names the key, the value and what was expected."""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable] = {}

    def register(self, name: str | None = None, obj: Callable | None = None):
        """Use as `@REG.register("name")` or `REG.register("name", obj)`."""

        def add(target: Callable) -> Callable:
            key = name or target.__name__
            if key in self._items and self._items[key] is not target:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = target
            return target

        return add(obj) if obj is not None else add

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str, key: str = "name") -> Callable:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"{key}: unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def build(self, section: Mapping[str, Any], key: str, **extra: Any) -> Any:
        """Build `section["name"]` with the section's other keys as keyword arguments (plus `extra`)."""
        section = dict(section or {})
        if "name" not in section:
            raise ConfigError(f"{key}.name: missing; choose a {self.kind} from {', '.join(self.names())}")
        target = self.get(section.pop("name"), f"{key}.name")
        kwargs = check_kwargs(target, section, key)
        return target(**kwargs, **extra)


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation in (inspect.Parameter.empty, Any):
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (str, bool):
        return isinstance(value, annotation)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, typing.Mapping) or annotation is dict:
        return isinstance(value, Mapping)
    return True


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def check_kwargs(target: Callable, section: Mapping[str, Any], key: str) -> dict[str, Any]:
    """Validate `section` against `target`'s keyword parameters; raise ConfigError naming the key."""
    sig = inspect.signature(target)
    params = sig.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolved forward references: fall back to no type checks
        hints = {}
    out = {}
    for name, value in section.items():
        if name not in params and not accepts_any:
            known = [p for p in params if p not in ("self",)]
            raise ConfigError(f"{key}.{name}: unknown key; {key} takes {', '.join(known)}")
        annotation = hints.get(name, inspect.Parameter.empty)
        if name in params and not _type_ok(value, annotation):
            raise ConfigError(f"{key}.{name}: expected {_type_name(annotation)}, got {value!r}")
        out[name] = value
    return out


SPACES = Registry("search space")
STRATEGIES = Registry("strategy")
EVALUATORS = Registry("evaluator")
DATASETS = Registry("dataset")
MODELS = Registry("model")
TASKS = Registry("task")
#: special layers a space builds by name from its config (`core.ops`): regularizers, quantized and epitome convs
OPS = Registry("operator")
