"""Special layers: ordered dropout (NetAdaptV2), DGConv and FGConv with their static derivation, Disout,
quantized convolutions, epitome convolutions.

Importing this package registers the operators a config can name in `core.engine.registry.OPS`.
"""

from core.ops.dgconv import DGConv2d, FGConv2d, dgconv_regularizer  # noqa: F401
from core.ops.ordered_dropout import OrderedBatchNorm2d, OrderedConv2d, OrderedDropout, OrderedLinear  # noqa: F401
from core.ops.static_groups import GroupedConv2d, group_report, to_static  # noqa: F401
from core.ops.disout import Disout, LinearSchedule, bind_weight_behind, set_total_steps  # noqa: F401
from core.ops.quant import BinaryConv2d, QuantConv2d, bit_operations, weight_bits  # noqa: F401
from core.ops.squeeze import squeeze_blocks  # noqa: F401
from core.ops.epitome import EpitomeConv2d, inference_parameters  # noqa: F401
