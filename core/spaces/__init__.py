"""Reusable search spaces; importing this package registers them in `core.engine.registry.SPACES`."""

from core.spaces.darts import DartsSpace  # noqa: F401
from core.spaces.mobile import MobileSpace  # noqa: F401
from core.spaces.dna import DNASpace  # noqa: F401
from core.spaces.netadapt import NetAdaptSpace  # noqa: F401
from core.spaces.cell201 import Cell201Space  # noqa: F401
from core.spaces.compression import CompressionSpace  # noqa: F401  (also registers the compression evaluator)
from core.spaces.nsc import NSCSpace  # noqa: F401
from core.spaces.resnet import ResNetSpace  # noqa: F401
from core.spaces.hournas import hournas_space  # noqa: F401
from core.spaces.pnasnet import PNASSpace  # noqa: F401
