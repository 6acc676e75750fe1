"""Learned image compression that stays recognisable (Yang et al., "Discernible Image Compression", ACM MM 2020).

A Ballé-family codec (factorized prior, scale hyperprior) with a real bitstream (constriction's range
coder), trained with `R + lambda D + beta MMD(phi(x), phi(x_hat))`, searched over its widths and depth,
and measured against JPEG and WebP. Importing the package registers the `compression_embedded` and
`compression_folders` datasets, the `codec` space, the `codec_rd` evaluator and the
`image_compression` task.
"""

from tasks.image_compression import data, search, space, task  # noqa: F401  (registrations)
from tasks.image_compression.classical import PillowCodec
from tasks.image_compression.models import Codec, FactorizedPrior, ScaleHyperprior, build_codec
from tasks.image_compression.perception import PerceptionConsistency
from tasks.image_compression.space import CodecSpace
from tasks.image_compression.task import ImageCompressionTask

__all__ = ["Codec", "FactorizedPrior", "ScaleHyperprior", "build_codec", "PillowCodec", "PerceptionConsistency",
           "CodecSpace", "ImageCompressionTask"]
