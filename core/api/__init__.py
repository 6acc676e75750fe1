"""How a search space is declared: Choice, Arch, SearchSpace and supernet choice modules."""

from core.api.arch import Arch
from core.api.choice import Choice
from core.api.modules import (ChoiceModule, activate, architecture_parameters, choice_modules, derive,
                                set_mixture, weight_parameters)
from core.api.space import SearchSpace

__all__ = ["Arch", "Choice", "SearchSpace", "ChoiceModule", "activate", "set_mixture", "derive",
           "choice_modules", "architecture_parameters", "weight_parameters"]
