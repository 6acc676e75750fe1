"""Image translation: pix2pix / CycleGAN data and training, portable GAN distillation, PU-GAN, U-Net search.

Importing the package registers the `translation_embedded` and
`translation_folders` datasets, the `unet_translator` space, the
`translation_train` evaluator and the `image_translation` task.
"""

from tasks.image_translation import data, search, space, task  # noqa: F401  (registrations)
from tasks.image_translation.models import PatchDiscriminator, ResnetGenerator, UNet, pix2pix_unet
from tasks.image_translation.space import UNetTranslatorSpace, unet_arch, unet_budget
from tasks.image_translation.task import ImageTranslationTask, default_terms

__all__ = ["PatchDiscriminator", "ResnetGenerator", "UNet", "pix2pix_unet", "UNetTranslatorSpace", "unet_arch",
           "unet_budget", "ImageTranslationTask", "default_terms"]
