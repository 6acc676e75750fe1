"""Named registries: configs name components, tasks register them on import.

`build(section, key)` checks the section's keys against the component's
signature, so a typo in a config fails with the key's full path instead of a
TypeError deep inside a constructor.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a config: the message names the key, the value and what was expected."""


class Registry:
    """Names -> components. `providers` are the core packages whose import registers the built-in
    components (fixed module names, imported on the first look-up; never a name from a config)."""

    def __init__(self, kind: str, providers: tuple[str, ...] = ()):
        self.kind = kind
        self._items: dict[str, Callable] = {}
        self._providers = providers

    def _load_providers(self) -> None:
        if self._providers:
            providers, self._providers = self._providers, ()
            for module in providers:
                importlib.import_module(module)

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
        self._load_providers()
        return name in self._items

    def names(self) -> list[str]:
        self._load_providers()
        return sorted(self._items)

    def get(self, name: str, key: str = "name") -> Callable:
        self._load_providers()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"{key}: unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def check(self, section: Mapping[str, Any], key: str, provided: tuple[str, ...] | None = ()) -> Callable:
        """Check `section` against its component's signature without building it (`provided`: the arguments
        the caller adds; None: not known yet, required arguments are not checked); return the component."""
        section = dict(section or {})
        if "name" not in section:
            raise ConfigError(f"{key}.name: missing; choose a {self.kind} from {', '.join(self.names())}")
        target = self.get(section.pop("name"), f"{key}.name")
        check_kwargs(target, section, key, provided=provided)
        return target

    def build(self, section: Mapping[str, Any], key: str, optional: Mapping[str, Any] | None = None,
              **extra: Any) -> Any:
        """Build `section["name"]` with the section's other keys as keyword arguments, plus `extra`, plus those
        of `optional` the component's signature takes (e.g. the task, which only some components need)."""
        target = self.get(dict(section or {}).get("name"), f"{key}.name") if isinstance(section, Mapping) \
            and "name" in section else None
        accepted = inspect.signature(target).parameters if target is not None else {}
        optional = {k: v for k, v in (optional or {}).items() if k in accepted}
        target = self.check(section, key, provided=(*extra, *optional))
        kwargs = {k: v for k, v in dict(section).items() if k != "name"}
        return target(**kwargs, **{k: v for k, v in optional.items() if k not in kwargs}, **extra)


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


def check_kwargs(target: Callable, section: Mapping[str, Any], key: str,
                 provided: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Validate `section` against `target`'s keyword parameters; raise ConfigError naming the key.

    Unknown keys and wrong types always fail. With `provided` (the names the caller passes itself), a
    required parameter that neither the section nor the caller gives fails too. A dictionary the target
    passes on as keyword arguments (declared by `target.nested_kwargs(section) -> {name: (callable,
    extra allowed names, names the target sets itself)}`) is checked against what it feeds.
    """
    sig = inspect.signature(target)
    params = sig.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolved forward references: fall back to no type checks
        hints = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{key}: expected a mapping of arguments, got {section!r}")
    out = {}
    for name, value in section.items():
        if not isinstance(name, str):
            raise ConfigError(f"{key}.{name}: keys must be names, got {name!r}")
        if name not in params and not accepts_any:
            known = [p for p in params if p not in ("self",)]
            raise ConfigError(f"{key}.{name}: unknown key; {key} takes {', '.join(known)}")
        annotation = hints.get(name, inspect.Parameter.empty)
        if name in params and not _type_ok(value, annotation):
            raise ConfigError(f"{key}.{name}: expected {_type_name(annotation)}, got {value!r}")
        out[name] = value
    if provided is not None:
        for name, p in params.items():
            if (p.default is inspect.Parameter.empty and name != "self"
                    and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                    and name not in section and name not in provided):
                raise ConfigError(f"{key}.{name}: missing; {key} needs {name}")
    nested = getattr(target, "nested_kwargs", None)
    if callable(nested):
        for name, (feeds, extra, fixed) in nested(section).items():
            value = section.get(name)
            if not isinstance(value, Mapping):
                continue
            named = [p for p, v in inspect.signature(feeds).parameters.items()
                     if v.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                     and p != "self" and p not in fixed]
            for sub in value:
                if sub in fixed:
                    raise ConfigError(f"{key}.{name}.{sub}: set by {key} itself; it cannot be passed here")
                if sub in extra:
                    continue
                if sub not in named:
                    raise ConfigError(f"{key}.{name}.{sub}: unknown key; {key}.{name} feeds "
                                      f"{getattr(feeds, '__name__', feeds)}, which takes "
                                      f"{', '.join([*named, *extra])}")
                check_kwargs(feeds, {sub: value[sub]}, f"{key}.{name}")
    return out


SPACES = Registry("search space", providers=("core.zoo",))
STRATEGIES = Registry("strategy", providers=("core.strategies", "core.oneshot"))
EVALUATORS = Registry("evaluator", providers=("core.evaluation",))
DATASETS = Registry("dataset")
MODELS = Registry("model")
TEACHERS = Registry("teacher", providers=("core.distill.teachers", "core.zoo.compression.teachers"))
TASKS = Registry("task")
#: special layers a space builds by name from its config (`core.ops`): regularizers, quantized and epitome convs
OPS = Registry("operator", providers=("core.ops",))
