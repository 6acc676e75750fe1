"""`Choice`: one named discrete decision with its ordered options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Choice:
    """A named decision. Options are ordered: encodings and supernets index them."""

    name: str
    options: tuple
    default: Any = None

    def __post_init__(self):
        options = tuple(tuple(o) if isinstance(o, list) else o for o in self.options)
        object.__setattr__(self, "options", options)
        if not options:
            raise ValueError(f"choice {self.name!r} has no options")
        if len(set(options)) != len(options):
            raise ValueError(f"choice {self.name!r} has repeated options: {options}")
        if self.default is None:
            object.__setattr__(self, "default", options[0])
        elif self.default not in options:
            raise ValueError(f"choice {self.name!r}: default {self.default!r} is not an option of {options}")

    def __len__(self) -> int:
        return len(self.options)

    def index(self, value: Any) -> int:
        try:
            return self.options.index(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an option of choice {self.name!r}; options: {list(self.options)}") from None
