"""Hand-designed baselines expressed in the searched space, so a comparison is fair.

`mobilenetv2`: the MobileNetV2 recipe (Sandler et al., CVPR 2018, Table 2)
placed in a mobile space: every stage at its deepest, every layer an
inverted residual with expansion 6 and a 3x3 kernel, widest width option.
Where the space lacks `mb6_k3`, the option with the largest expansion and
smallest kernel is used.

`mobilenetv2_budget`: the same recipe scaled down the way MobileNetV2 is
scaled by hand (depth and width per stage), taking the largest such network
whose MACs fit the objective's `macs <=` constraint: the fair "equal MACs"
comparison for a constrained search.
"""

from __future__ import annotations

import re

from core.api import Arch, SearchSpace

_OP = re.compile(r"^mb(\d+)_k(\d+)$")


def _mbv2_op(options: tuple) -> str:
    ops = [(int(m.group(1)), int(m.group(2)), o) for o in options if (m := _OP.match(str(o)))]
    if not ops:
        raise ValueError(f"no inverted-residual op among {options}")
    return max(ops, key=lambda t: (t[0], -t[1]))[2]


def mobilenetv2_style(space: SearchSpace, max_macs: float | None = None,
                      input_shape: tuple[int, ...] | None = None) -> Arch:
    """The MobileNetV2-style arch; with `max_macs`, the largest depth/width variant within it."""
    full = _mobilenetv2_full(space)
    if max_macs is None:
        return full
    import itertools

    import torch

    from core.cost import count_macs

    x = torch.zeros(1, *input_shape)
    scaled = [c for c in space.choices if c.name.rsplit(".", 1)[-1] in ("depth", "width")]
    best: tuple[float, Arch] | None = None
    for values in itertools.product(*(c.options for c in scaled)):
        arch = space.canonical(full.updated(dict(zip((c.name for c in scaled), values))))
        macs = count_macs(space.build(arch), x)
        if macs <= max_macs and (best is None or macs > best[0]):
            best = (macs, arch)
    if best is None:
        raise ValueError(f"no MobileNetV2-style arch of this space fits macs <= {max_macs:g}")
    return best[1]


def _mobilenetv2_full(space: SearchSpace) -> Arch:
    values = {}
    for c in space.choices:
        leaf = c.name.rsplit(".", 1)[-1]
        if leaf in ("depth", "width"):
            values[c.name] = max(c.options)
        elif leaf == "op":
            values[c.name] = _mbv2_op(c.options)
        else:
            values[c.name] = c.default
    return space.check(Arch(values))


BASELINES = {"mobilenetv2": mobilenetv2_style}
#: baselines sized to the objective's MACs constraint
BUDGET_BASELINES = {"mobilenetv2_budget": mobilenetv2_style}
