"""Reusable search spaces; importing this package registers them in `core.engine.registry.SPACES`."""

from core.zoo.darts import DartsSpace  # noqa: F401
from core.zoo.mobile import MobileSpace  # noqa: F401
from core.zoo.dna import DNASpace  # noqa: F401
from core.zoo.netadapt import NetAdaptSpace  # noqa: F401
from core.zoo.cell201 import Cell201Space  # noqa: F401
from core.zoo.compression import CompressionSpace  # noqa: F401
from core.zoo.nsc import NSCSpace  # noqa: F401
from core.zoo.resnet import ResNetSpace  # noqa: F401
from core.zoo.hournas import hournas_space  # noqa: F401
from core.zoo.pnasnet import PNASSpace  # noqa: F401
