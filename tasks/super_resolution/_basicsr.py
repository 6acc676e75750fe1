"""The one place that imports basicsr (the `sr` extra, `basicsr-fixed`).

The original `basicsr` 1.4.2 on PyPI imports `torchvision.transforms.functional_tensor`,
which torchvision removed in 0.17; `basicsr-fixed` (same package name `basicsr`)
is the maintained build that imports on current torchvision, and it does here
(torchvision 0.29). If an older `basicsr` is installed instead, the import fails
on that module; we then alias it to `torchvision.transforms.functional` (its
`rgb_to_grayscale`, the only name basicsr takes from it, lives there now) and
retry once, and say so in a warning. Nothing else in the task imports basicsr
directly, so this is the only shim.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def _import():
    try:
        return importlib.import_module("basicsr")
    except ModuleNotFoundError as err:
        if err.name == "basicsr":
            raise ModuleNotFoundError("the super_resolution task needs basicsr: pip install 'archforge[sr]' "
                                      "(basicsr-fixed)") from None
        if err.name != "torchvision.transforms.functional_tensor":
            raise
    import torchvision.transforms.functional as tvf

    sys.modules["torchvision.transforms.functional_tensor"] = tvf
    for name in [m for m in sys.modules if m == "basicsr" or m.startswith("basicsr.")]:
        del sys.modules[name]
    warnings.warn("basicsr needed torchvision.transforms.functional_tensor (removed in torchvision 0.17); aliased "
                  "it to torchvision.transforms.functional. Install basicsr-fixed to avoid this.", stacklevel=2)
    return importlib.import_module("basicsr")


basicsr = _import()

from basicsr.archs import build_network  # noqa: E402
from basicsr.archs.arch_util import default_init_weights  # noqa: E402
from basicsr.archs.srresnet_arch import MSRResNet  # noqa: E402
from basicsr.data.data_util import paired_paths_from_folder  # noqa: E402
from basicsr.data.transforms import augment, mod_crop, paired_random_crop  # noqa: E402
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils import img2tensor, imwrite, tensor2img  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402
from basicsr.utils.registry import ARCH_REGISTRY  # noqa: E402

__all__ = ["basicsr", "build_network", "default_init_weights", "MSRResNet", "paired_paths_from_folder", "augment",
           "mod_crop", "paired_random_crop", "calculate_psnr", "calculate_ssim", "img2tensor", "imwrite", "tensor2img",
           "imresize", "ARCH_REGISTRY"]
