"""Special layers: ordered dropout (NetAdaptV2), DGConv, Disout, weight sampling, quantization, ..."""

from core.ops.ordered_dropout import OrderedBatchNorm2d, OrderedConv2d, OrderedDropout, OrderedLinear  # noqa: F401
