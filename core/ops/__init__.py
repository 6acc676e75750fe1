"""Special layers: ordered dropout (NetAdaptV2), DGConv and FGConv with their static derivation, ..."""

from core.ops.dgconv import DGConv2d, FGConv2d, dgconv_regularizer  # noqa: F401
from core.ops.ordered_dropout import OrderedBatchNorm2d, OrderedConv2d, OrderedDropout, OrderedLinear  # noqa: F401
from core.ops.static_groups import GroupedConv2d, group_report, to_static  # noqa: F401
