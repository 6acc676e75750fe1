"""Reusable search spaces; importing this package registers them in `core.engine.registry.SPACES`."""

from core.spaces.darts import DartsSpace  # noqa: F401
from core.spaces.mobile import MobileSpace  # noqa: F401
from core.spaces.dna import DNASpace  # noqa: F401
from core.spaces.netadapt import NetAdaptSpace  # noqa: F401
