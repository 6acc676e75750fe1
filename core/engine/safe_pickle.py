"""Reading the pickle-based data formats of the field without letting a file run code.

insightface's verification `.bin` files and CIFAR's python batches are
pickles, and `pickle.load` calls whatever callable a file names (a crafted
`.bin` can run `os.system`). `safe_load` unpickles with an allow-list per
format: a global the real format never holds stops the read with one line
naming the file and the global, before anything is called.

The allow-lists hold only constructors of plain data:

- `BYTES_AND_BOOLS` (verification `.bin`): nothing but `_codecs.encode` for
  the latin-1 form protocol 2 gives `bytes` (`pickle.dumps(b"...", 2)`);
  lists, tuples, bytes, str, ints and bools need no global at all.
- `NUMPY_ARRAYS` (CIFAR batches): the above plus numpy's array reconstructor
  (`numpy.core.multiarray._reconstruct`, `numpy.ndarray`, `numpy.dtype`,
  `scalar`), under both numpy 1's and numpy 2's module names. Arrays of
  dtype `object` are refused: they are the one numpy route back to arbitrary
  objects.
"""

from __future__ import annotations

import codecs
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.data import DataError


class _Refused(pickle.UnpicklingError):
    """Something the format never holds (the message says what)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles of `bytes` use it (latin-1 only; any other codec is refused)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(text, str):
        raise _Refused(f"it encodes with {encoding!r}")
    return codecs.encode(text, "latin1")


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise _Refused("it holds a numpy array of Python objects")
    return dtype


def _numpy_globals() -> dict[tuple[str, str], Callable]:
    from numpy._core import multiarray

    out: dict[tuple[str, str], Callable] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "_reconstruct")] = multiarray._reconstruct
        out[(module, "scalar")] = multiarray.scalar
    return out


BYTES_AND_BOOLS: dict[tuple[str, str], Callable] = {("_codecs", "encode"): _latin1_encode}
NUMPY_ARRAYS: dict[tuple[str, str], Callable] = {**BYTES_AND_BOOLS, **_numpy_globals()}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` answers only from `allowed` ((module, name) -> callable)."""

    def __init__(self, file, allowed: Mapping[tuple[str, str], Callable], **kwargs: Any):
        super().__init__(file, **kwargs)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise _Refused(f"it names {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("it holds a persistent reference")


def safe_load(path: str | Path, allowed: Mapping[tuple[str, str], Callable], what: str,
              encoding: str = "ASCII") -> Any:
    """Unpickle `path` admitting only the globals in `allowed`; `what` names the format in errors.

    Raises FileNotFoundError for a missing file and `DataError` (one line: the path, the format, the
    reason) for anything else: a refused global, a truncated or garbled file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f, allowed, encoding=encoding).load()
        except _Refused as err:
            raise DataError(f"{path}: refused to read: {err}, which a {what} never holds") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, MemoryError, OverflowError, UnicodeDecodeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{path}: not a {what} ({reason})") from None


__all__ = ["BYTES_AND_BOOLS", "NUMPY_ARRAYS", "RestrictedUnpickler", "safe_load"]
