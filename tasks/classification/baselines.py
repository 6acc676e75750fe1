"""Hand-designed baselines expressed in the searched space, so a comparison is fair.

`mobilenetv2`: the MobileNetV2 recipe (Sandler et al., CVPR 2018, Table 2)
placed in a mobile space: every stage at its deepest, every layer an
inverted residual with expansion 6 and a 3x3 kernel, widest width option.
Where the space lacks `mb6_k3`, the option with the largest expansion and
smallest kernel is used.
"""

from __future__ import annotations

import re

from core.space import Arch, SearchSpace

_OP = re.compile(r"^mb(\d+)_k(\d+)$")


def _mbv2_op(options: tuple) -> str:
    ops = [(int(m.group(1)), int(m.group(2)), o) for o in options if (m := _OP.match(str(o)))]
    if not ops:
        raise ValueError(f"no inverted-residual op among {options}")
    return max(ops, key=lambda t: (t[0], -t[1]))[2]


def mobilenetv2_style(space: SearchSpace) -> Arch:
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
