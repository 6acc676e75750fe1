"""Single-image super-resolution: trilevel NAS (Wu et al., arXiv 2101.06658) on basicsr data, metrics and archs.

Importing the package registers the `sr_embedded` and `sr_folders` datasets,
the `trilevel_sr` space, the `trilevel` searcher, the `super_resolution` task,
and `TrilevelSRNet` in basicsr's `ARCH_REGISTRY`.
"""

from tasks.super_resolution import data, search, space, task  # noqa: F401  (registrations)
from tasks.super_resolution.models import TrilevelSRNet, arch_macs
from tasks.super_resolution.search import TrilevelSearcher
from tasks.super_resolution.space import TrilevelSpace, msrresnet_budget, msrresnet_macs
from tasks.super_resolution.supernet import TrilevelSupernet
from tasks.super_resolution.task import SuperResolutionTask

__all__ = ["TrilevelSRNet", "arch_macs", "TrilevelSearcher", "TrilevelSpace", "TrilevelSupernet",
           "SuperResolutionTask", "msrresnet_budget", "msrresnet_macs"]
