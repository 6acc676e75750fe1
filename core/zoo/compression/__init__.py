"""ESNAC's compression search space (Cao et al., ICLR 2019): remove layers, shrink channels and add skips to a
teacher network. The evaluator that trains the students is `core.evaluation.compression`."""

from core.zoo.compression.space import (LAYER_TYPES, CompressedNet, CompressionSpace, compression_reward, layer_type,
                                        trace_chain)
from core.zoo.compression.teachers import TEACHERS, digits_cnn

__all__ = ["LAYER_TYPES", "TEACHERS", "digits_cnn", "layer_type", "trace_chain", "compression_reward",
           "CompressedNet", "CompressionSpace"]
