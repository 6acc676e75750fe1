"""Multi-source remote sensing: single-stream networks with learnable group convolution (DGConv).

Yang et al., IEEE TGRS 2022 (arXiv 2109.06094). Importing the package
registers the `rs_files` and `rs_embedded` datasets, the `rs_net` space, the
`rs_train` evaluator, the models `resnet18_{dgconv,plain,fgconv}` and
`unet_{dgconv,plain,fgconv}`, and the `remote_sensing` task.
"""

from tasks.remote_sensing import data, models, search, space, task  # noqa: F401  (registrations)
from tasks.remote_sensing.data import RSDataSplits, rs_embedded, rs_files
from tasks.remote_sensing.models import ResNet18, UNet
from tasks.remote_sensing.space import RSNetSpace
from tasks.remote_sensing.task import RemoteSensingTask

__all__ = ["RSDataSplits", "RSNetSpace", "RemoteSensingTask", "ResNet18", "UNet", "rs_embedded", "rs_files"]
