"""`Taps`: record what modules of a network receive and return, by module path, without editing the network.

A tap is a module path as `named_modules()` spells it (`"layer3.1"`,
`"stages.2"`, `"features.4.0.block"`), optionally suffixed with `:input` to
record the module's input instead of its output (`"fc:input"` is the pooled
feature a classifier sees). The empty path `""` is the whole network: its
output (logits for a classifier) or, with `":input"`, its input.

The hooks are torchdistill's (`torchdistill.core.forward_hook`, Matsubara,
"torchdistill: A Modular, Configuration-Driven Framework for Knowledge
Distillation", 2021) when it is installed; otherwise a built-in forward hook
with the same behaviour records the tensors. Either way: a module called
several times in one forward pass keeps the tensors of its last call; a
module with one input records that tensor, one with several a tuple.

Recorded tensors are cloned as they are recorded (`clone=True`, the
default): a tapped output that the next layer modifies in place
(`nn.ReLU(inplace=True)` after a BatchNorm, as in torchvision's ResNets)
would otherwise be overwritten before the loss reads it, and its backward
would fail with "modified by an inplace operation". The clone keeps the
autograd graph (its backward is the identity). `clone=False` saves the copy
for networks known to have no in-place ops after a tap.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

INPUT, OUTPUT = "input", "output"


def parse_tap(tap: str) -> tuple[str, str]:
    """`"layer3.1"` -> ("layer3.1", "output"); `"fc:input"` -> ("fc", "input")."""
    if not isinstance(tap, str):
        raise TypeError(f"a tap is a module path string such as 'layer3.1' or 'fc:input', got {tap!r}")
    path, _, io = tap.partition(":")
    io = io or OUTPUT
    if io not in (INPUT, OUTPUT):
        raise ValueError(f"tap {tap!r}: the suffix after ':' must be 'input' or 'output', got {io!r}")
    return path, io


def resolve_module(model: nn.Module, path: str, what: str = "tap") -> nn.Module:
    """`model.get_submodule(path)` with an error that names the path and the closest module names."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(path, names, n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
            f"; its top-level modules are {', '.join(repr(n) for n, _ in model.named_children())}"
        raise KeyError(f"{what} {path!r}: {type(model).__name__} has no submodule {path!r}{hint}") from None


def _torchdistill_hooks():
    try:
        from torchdistill.core.forward_hook import register_forward_hook_with_dict
    except ImportError:
        return None
    return register_forward_hook_with_dict


def _builtin_hook(module: nn.Module, path: str, requires_input: bool, requires_output: bool,
                  io_dict: dict) -> torch.utils.hooks.RemovableHandle:
    """Same storage layout as torchdistill: io_dict[path][io][device] = tensor (one-tuples unwrapped)."""
    io_dict[path] = {}

    def hook(_module, inputs, output):
        device = next((t.device for t in _tensors(output)), torch.device("cpu"))
        key = "cpu" if device.type == "cpu" else device.index
        if requires_input:
            value = inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else inputs
            io_dict[path].setdefault(INPUT, {})[key] = value
        if requires_output:
            value = output[0] if isinstance(output, tuple) and len(output) == 1 else output
            io_dict[path].setdefault(OUTPUT, {})[key] = value

    return module.register_forward_hook(hook)


def _clone(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    return value


def _clone_hook(module: nn.Module, path: str, ios: set[str], io_dict: dict) -> torch.utils.hooks.RemovableHandle:
    """Runs right after the recording hook (hooks run in registration order): replace what it stored by copies,
    before any later in-place op can overwrite the originals."""

    def hook(_module, _inputs, _output):
        for io in ios:
            per_device = io_dict.get(path, {}).get(io)
            for key in list(per_device or ()):
                per_device[key] = _clone(per_device[key])

    return module.register_forward_hook(hook)


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)


class Taps:
    """Forward hooks on `model` that record the tensors at `taps` (module paths, see the module docstring).

    Usage::

        taps = Taps(resnet, ["layer2", "layer3.1", "fc:input"])
        logits = resnet(x)
        feats = taps.pop()          # {"layer2": Tensor, "layer3.1": Tensor, "fc:input": Tensor}
        taps.remove()               # or use `with Taps(...) as taps:`

    `backend` is "torchdistill" (its `register_forward_hook_with_dict`), "builtin",
    or "auto" (torchdistill when installed). Recorded tensors keep their autograd
    graph: features of a student can be used in a loss directly. `clone`: copy
    each recorded tensor at once, so later in-place ops cannot change it (see
    the module docstring).
    """

    def __init__(self, model: nn.Module, taps: Iterable[str], backend: str = "auto", clone: bool = True):
        if backend not in ("auto", "torchdistill", "builtin"):
            raise ValueError(f"backend: expected 'auto', 'torchdistill' or 'builtin', got {backend!r}")
        register = _torchdistill_hooks() if backend in ("auto", "torchdistill") else None
        if backend == "torchdistill" and register is None:
            raise ImportError("Taps(backend='torchdistill'): torchdistill is not installed (pip install torchdistill)")
        self.backend = "torchdistill" if register is not None else "builtin"
        register = register or _builtin_hook
        self.model = model
        self.taps: tuple[str, ...] = tuple(dict.fromkeys(taps))
        wanted: dict[str, set[str]] = {}
        for tap in self.taps:
            path, io = parse_tap(tap)
            wanted.setdefault(path, set()).add(io)
        self.paths = tuple(wanted)
        self._io_dict: dict = {}
        self._handles = []
        for path, ios in wanted.items():
            module = resolve_module(model, path)
            self._handles.append(register(module, path, INPUT in ios, OUTPUT in ios, self._io_dict))
            if clone:
                self._handles.append(_clone_hook(module, path, ios, self._io_dict))

    def pop(self, missing_ok: bool = False) -> dict[str, Any]:
        """The tensors recorded since the last `pop`, keyed by tap; they are forgotten here.

        A tap whose module did not run raises KeyError, unless `missing_ok`.
        """
        out: dict[str, Any] = {}
        for tap in self.taps:
            path, io = parse_tap(tap)
            per_device = self._io_dict.get(path, {}).pop(io, None)
            if not per_device:
                if missing_ok:
                    continue
                raise KeyError(f"tap {tap!r}: module {path or '<root>'!r} did not run in the last forward pass")
            if len(per_device) == 1:
                out[tap] = next(iter(per_device.values()))
            else:  # a model replicated over several GPUs (DataParallel): concatenate along the batch
                out[tap] = torch.cat([per_device[k] for k in sorted(per_device, key=str)], 0)
        self.clear()
        return out

    def clear(self) -> None:
        for sub in self._io_dict.values():
            sub.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        """Run the model and return (its output, the recorded taps)."""
        self.clear()
        output = self.model(*args, **kwargs)
        return output, self.pop()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._io_dict.clear()

    def __enter__(self) -> "Taps":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Taps({type(self.model).__name__}, {list(self.taps)}, backend={self.backend!r})"
