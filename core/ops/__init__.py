"""Special layers: ordered dropout (NetAdaptV2), Disout, quantized convolutions, epitome convolutions.

Importing this package registers the operators a config can name in `core.engine.registry.OPS`.
"""

from core.ops.ordered_dropout import OrderedBatchNorm2d, OrderedConv2d, OrderedDropout, OrderedLinear  # noqa: F401
from core.ops.disout import Disout, LinearSchedule, bind_weight_behind, set_total_steps  # noqa: F401
from core.ops.quant import BinaryConv2d, QuantConv2d, bit_operations, weight_bits  # noqa: F401
from core.ops.squeeze import squeeze_blocks  # noqa: F401
from core.ops.epitome import EpitomeConv2d, inference_parameters  # noqa: F401
