"""`Arch`: one architecture as an immutable mapping `choice name -> value`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Iterator

_SCALARS = (bool, int, float, str, type(None))


def _freeze(name: str, value: Any) -> Any:
    """Values are JSON scalars or (nested) tuples of them, so an Arch hashes and round-trips."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(name, v) for v in value)
    raise TypeError(f"Arch value for {name!r} must be a JSON scalar or a list of them, got {type(value).__name__}")


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


class Arch(Mapping):
    """An immutable, hashable architecture.

    Names are paths (`normal.node2.edge0.op`); `key` is a stable 16-hex digest of
    the canonical JSON, the same on every machine and Python run.
    """

    __slots__ = ("_items", "_dict", "_key")

    def __init__(self, mapping: Mapping[str, Any] | None = None, **values: Any):
        merged = dict(mapping or {}, **values)
        for name in merged:
            if not isinstance(name, str):
                raise TypeError(f"Arch choice names must be strings, got {name!r}")
        self._items = tuple(sorted((k, _freeze(k, v)) for k, v in merged.items()))
        self._dict = dict(self._items)
        self._key: str | None = None

    def __getitem__(self, name: str) -> Any:
        try:
            return self._dict[name]
        except KeyError:
            raise KeyError(f"arch has no choice {name!r}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Arch):
            return self._items == other._items
        return NotImplemented

    def __repr__(self) -> str:
        return f"Arch({self.key}, {len(self)} choices)"

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = hashlib.sha1(self.to_json().encode()).hexdigest()[:16]
        return self._key

    def to_dict(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self._items}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent,
                          separators=None if indent else (",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Arch":
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("an Arch JSON document must be an object of choice name -> value")
        return cls(data)

    def replace(self, **changes: Any) -> "Arch":
        return Arch(self._dict, **changes)

    def updated(self, changes: Mapping[str, Any]) -> "Arch":
        return Arch({**self._dict, **changes})

    def diff(self, other: "Arch") -> list[str]:
        """Names whose values differ (or exist in only one of the two)."""
        names = set(self._dict) | set(other._dict)
        return sorted(n for n in names if self._dict.get(n, _MISSING) != other._dict.get(n, _MISSING))


_MISSING = object()
