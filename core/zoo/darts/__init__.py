"""The DARTS cell search space.

Liu, Simonyan, Yang. "DARTS: Differentiable Architecture Search", ICLR 2019
(arXiv 1806.09055); official code github.com/quark0/darts (`cnn/operations.py`,
`cnn/genotypes.py`, `cnn/model.py`, `cnn/model_search.py`).

A network stacks a normal and a reduction cell. Each cell has two inputs
(states 0 and 1: the outputs of the two previous cells) and `steps` (4)
intermediate nodes; node i sums two edges, each an op applied to one earlier
state (0 .. i+1). The cell output concatenates all intermediate nodes.

An `Arch` of this space names, per cell type c in {normal, reduce}, node i and
edge j in {0, 1}:

    c.node{i}.in{j}.input   index of the earlier state the edge reads
    c.node{i}.in{j}.op      one of the op names (default: the 8 DARTS ops)

which is the official `Genotype` with the per-node pairs spelled out; the two
inputs of a node must differ, as in every genotype DARTS derives. Module paths
of the evaluation network follow the official code (`cells.3._ops.1.op.2`,
`auxiliary_head.features.2`, ...) so state_dict keys line up with it.
"""

from core.zoo.darts.genotypes import (DARTS, DARTS_V1, DARTS_V2, GENOTYPES, Genotype, arch_to_genotype,
                                      genotype_to_arch, make_genotype, parse_genotype, to_genotype)
from core.zoo.darts.network import AuxiliaryHeadCIFAR, Cell, NetworkCIFAR, count_parameters
from core.zoo.darts.ops import (CELL_TYPES, OPS, PRIMITIVES, DilConv, FactorizedReduce, ReLUConvBN, SepConv, Zero,
                                drop_path, make_op)
from core.zoo.darts.space import DartsSpace, check_op_names
from core.zoo.darts.supernet import SearchCell, SearchNetwork, derive_genotype, parse_cell, steps_for_edges
from core.zoo.darts.fused import FusedMixture, fuse_edges

__all__ = ["PRIMITIVES", "CELL_TYPES", "OPS", "Zero", "ReLUConvBN", "SepConv", "DilConv", "FactorizedReduce",
           "make_op", "drop_path", "Genotype", "DARTS_V1", "DARTS_V2", "DARTS", "GENOTYPES", "make_genotype",
           "parse_genotype", "to_genotype", "genotype_to_arch", "arch_to_genotype", "Cell", "AuxiliaryHeadCIFAR",
           "NetworkCIFAR", "count_parameters", "SearchCell", "SearchNetwork", "derive_genotype", "DartsSpace",
           "check_op_names", "parse_cell", "steps_for_edges", "FusedMixture", "fuse_edges"]
