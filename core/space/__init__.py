"""How a search space is declared: Choice, Arch, SearchSpace and supernet choice modules."""

from core.space.arch import Arch
from core.space.choice import Choice
from core.space.modules import (ChoiceModule, activate, architecture_parameters, choice_modules, derive,
                                set_mixture, weight_parameters)
from core.space.space import SearchSpace

__all__ = ["Arch", "Choice", "SearchSpace", "ChoiceModule", "activate", "set_mixture", "derive",
           "choice_modules", "architecture_parameters", "weight_parameters"]
import core.space.sparsestmax  # noqa: F401,E402  (registers the sparsestmax and sparsemax relaxations)
