"""Run a searcher with its model on the `meta` device to find tensors made on the wrong device, without a GPU.

On CUDA, a tensor made on the CPU that meets the model's tensors in an op
(a probe image, a constant, a mask) fails with "Expected all tensors to be on
the same device". `OnMeta` makes the same mix-up fail on a CPU-only machine:
the model and its data live on `meta` (shapes, no values), and any op that
takes a meta tensor together with a CPU tensor of one or more dimensions
raises, naming the op (0-d CPU tensors are scalars, allowed on CUDA too;
copies and indexing across devices are allowed, as on CUDA).

Meta tensors hold no values, so reading one on the host (`.item()`, `float`,
`.cpu()`) returns a placeholder instead and the run goes on: 0.5 for floats,
1 for integers, True for a truth value (False for the result of `any`: such
checks look for trouble), and ones for copies to the host (masks keep
everything, weights select something). Data-dependent shapes (`nonzero`, `torchvision.ops.nms`)
keep every element. Results are meaningless: only device placement is checked.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
_ACROSS_DEVICES = {aten.copy_.default, aten._to_copy.default, aten.index.Tensor, aten.index_put_.default,
                   aten.index_put.default, aten._index_put_impl_.default}


class OnMeta(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0          # ops that ran on meta tensors
        self.host_reads = 0   # values read back to the host (placeholders returned)
        self._any: dict[int, weakref.ref] = {}  # results of `any` (their truth value reads False), by id

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if not any(t.is_meta for t in tensors):
            return func(*args, **kwargs)
        self.ops += 1
        host = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        if host and func not in _ACROSS_DEVICES:
            raise RuntimeError(f"{func}: a {tuple(host[0].shape)} tensor on the CPU meets tensors on the model's "
                               f"device")
        if func is aten._local_scalar_dense.default:
            self.host_reads += 1
            t = args[0]
            if t.dtype == torch.bool:
                ref = self._any.get(id(t))
                return not (ref is not None and ref() is t)
            return 0.5 if t.is_floating_point() else 1
        if func is aten._to_copy.default and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "cpu":
            self.host_reads += 1
            return torch.ones(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
        if func is aten.nonzero.default:
            return torch.empty((args[0].numel(), args[0].dim()), dtype=torch.long, device="meta")
        if str(func) == "torchvision.nms.default":
            return torch.empty((args[0].shape[0],), dtype=torch.long, device="meta")
        out = func(*args, **kwargs)
        if func.overloadpacket is aten.any and isinstance(out, torch.Tensor):
            self._any[id(out)] = weakref.ref(out)
        return out
