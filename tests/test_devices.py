"""Every one-shot searcher, supernet trainer and device-aware evaluator keeps its tensors on the model's device.

On a CPU-only machine each runs a few steps with its model on the `meta`
device (`meta_device.OnMeta`): a tensor made on the CPU that meets the
model's tensors fails there as it would on CUDA. On a machine with a GPU
(`pytest -m cuda`), each also runs for real on CUDA, and so does every
task's final training through the CLI.
"""

import functools
import tempfile
from pathlib import Path

import pytest
import torch

from core.testing.meta import OnMeta

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@functools.lru_cache(maxsize=None)
def digits():
    from tasks.classification.data import digits as load

    return load()


def tiny():
    from core.testing import TinyClassification

    return TinyClassification()


@functools.lru_cache(maxsize=None)
def shapes():
    from tasks.detection.data import shapes as load

    return load(root=tempfile.mkdtemp(prefix="archforge-shapes-"), image_size=64, train=8, val=4, test=4, seed=3)


@functools.lru_cache(maxsize=None)
def faces():
    from core.engine.data import DataSplits

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 16, 16, generator=g), torch.arange(24) % 3
    return DataSplits("tiny", torch.utils.data.TensorDataset(x, y), None, None, (3, 16, 16), num_classes=3)


def darts(device, **kw):
    from core.zoo.darts import DartsSpace
    from core.oneshot import DartsSearcher

    space = DartsSpace(C=4, layers=3, num_classes=10, in_channels=1, steps=2)
    return DartsSearcher(space, epochs=1, steps_per_epoch=1, batch_size=8, supernet={"C": 4, "layers": 3},
                         device=device, task=tiny(), **kw).fit(None, digits())


def spos(device):
    from core.zoo.mobile import digits_space
    from core.supernet.spos import SPOSTrainer

    return SPOSTrainer(digits_space(), digits(), tiny(), epochs=1, steps_per_epoch=2, batch_size=8, device=device).fit()


def supernet_evaluator(device):
    from core.evaluation import SupernetEvaluator
    from core.zoo.mobile import digits_space

    space = digits_space()
    evaluator = SupernetEvaluator(space, digits(), tiny(), epochs=1, train={"steps_per_epoch": 2, "batch_size": 8},
                                  bn_batches=1, bn_batch_size=8, batch_size=128, device=device)
    return evaluator.evaluate(space.default())


def train_evaluator(device):
    from core.evaluation.train import TrainEvaluator
    from core.zoo.mobile import digits_space

    space = digits_space()
    return TrainEvaluator(space, digits(), tiny(), epochs=1, sample_ratio=0.03, device=device).evaluate(space.default())


def dcnas(device):
    from core.zoo.cell201 import Cell201Space
    from core.oneshot import DCNASSearch

    return DCNASSearch(Cell201Space(), epochs=1, train={"steps_per_epoch": 2, "batch_size": 8}, samples=4,
                       clusters=2, probe_size=8, bn_batches=1, final_steps=2, final_bn_batches=1,
                       device=device, task=tiny()).fit(None, digits())


def hournas(device):
    from core.objective import Objective
    from core.zoo.mobile import digits_space
    from core.oneshot import HourNASSearch

    space = digits_space()
    return HourNASSearch(space, objective=Objective(constraints=["macs <= 1e6"]), vital_epochs=1, proposal_epochs=1,
                         train={"steps_per_epoch": 2, "batch_size": 8}, vital_evaluations=2, evaluations=2,
                         population_size=2, sample_size=1, bn_batches=1, device=device, task=tiny()).fit(None, digits())


def dna(device):
    from core.distill import SmallCNN
    from core.zoo.dna import dna_digits_space
    from core.oneshot import DNASearch

    torch.manual_seed(0)
    return DNASearch(dna_digits_space(), epochs_per_block=1, steps_per_epoch=2, score_batches=1, batch_size=16,
                     device=device, task=tiny()).fit(None, digits(), teacher=SmallCNN(widths=(32, 48, 64), strides=(1, 2, 2)))


def netadapt(device):
    from core.zoo.netadapt import NetAdaptSpace
    from core.oneshot import NetAdaptV2Searcher

    return NetAdaptV2Searcher(NetAdaptSpace(), budget_ratio=0.7, epochs=1, train={"steps_per_epoch": 2, "batch_size": 8}, samples=2,
                              bn_batches=1, max_iterations=1, device=device, task=tiny()).fit(None, digits())


def hitdet(device, **kw):
    from tasks.detection.search import HitDetSearcher
    from tasks.detection.space import HitDetectorSpace

    tiny = {"width": 0.125, "stage_blocks": (1, 1, 2, 1), "head_blocks": 1, "min_size": 64, "max_size": 64,
            "candidates": {"backbone": ["ir_k3_d1_e1", "ir_k5_d1_e6"], "neck": ["sep_k3_d1", "conv_k5_d1"],
                           "head": ["conv_k3_d1", "ir_k5_d1_e6"]},
            "detector_kwargs": {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                                "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 20,
                                "box_batch_size_per_image": 16, "rpn_batch_size_per_image": 32}}
    space = HitDetectorSpace(num_classes=shapes().num_classes, **tiny)
    return HitDetSearcher(space, epochs=1, batch_size=2, steps_per_epoch=2, arch_start_epoch=0, device=device,
                          **kw).fit(None, shapes())


def trilevel(device):
    from core.engine.registry import DATASETS
    from tasks.super_resolution.search import TrilevelSearcher
    from tasks.super_resolution.space import TrilevelSpace

    space = TrilevelSpace(scale=2, num_feat=8, stem_cells=1, path_cells=2, ops_per_cell=2)
    data = DATASETS.build({"name": "sr_embedded", "patch_size": 12, "samples_per_epoch": 8, "hr_crop": 48}, "data",
                          scale=2)
    return TrilevelSearcher(space, epochs=1, steps_per_epoch=2, batch_size=2, macs_target=1e6,
                            device=device).fit(None, data)


def pocketnet(device):
    from core.oneshot import DartsSearcher
    from tasks.face_recognition.space import PocketNetSpace
    from tasks.face_recognition.task import FaceRecognitionTask

    space = PocketNetSpace(C=4, layers=3, input_size=16, embedding_size=16, num_classes=3, steps=2)
    return DartsSearcher(space, order=2, epochs=1, batch_size=6, steps_per_epoch=1,
                         supernet={"C": 4, "layers": 3, "stem_multiplier": 3}, device=device,
                         task=FaceRecognitionTask({})).fit(None, faces())


SEARCHERS = {
    "darts": darts,
    "darts_second_order_gumbel": functools.partial(darts, order=2, relaxation="gumbel"),
    "darts_sparsestmax": functools.partial(darts, relaxation="sparsestmax"),
    "darts_fused_channels_last_bf16": functools.partial(darts, fused_edges=True, channels_last=True, precision="bf16"),
    "spos": spos,
    "supernet_evaluator": supernet_evaluator,
    "train_evaluator": train_evaluator,
    "dcnas": dcnas,
    "hournas": hournas,
    "dna": dna,
    "netadapt": netadapt,
    "hitdet": hitdet,
    "hitdet_screening": functools.partial(hitdet, screening={"steps": 2, "keep": 2, "rounds": 1, "batch_size": 2,
                                                             "stage_blocks": [1, 1, 1, 1]}),
    "trilevel_sr": trilevel,
    "pocketnet": pocketnet,
}


#: slower on the meta device (many small ops, each through Python); `-m slow` runs them
SLOW_ON_META = {"darts_second_order_gumbel", "darts_sparsestmax", "darts_fused_channels_last_bf16",
                "hitdet_screening", "trilevel_sr", "pocketnet", "hournas"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ON_META else n
                                  for n in SEARCHERS])
def test_searcher_makes_its_tensors_on_the_models_device(name):
    with OnMeta() as mode:
        SEARCHERS[name]("meta")
    assert mode.ops > 100  # the work really ran on the meta device


def test_the_meta_check_catches_a_probe_made_on_the_cpu():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).to("meta")
    with pytest.raises(RuntimeError, match="on the CPU meets tensors on the model's device"), OnMeta():
        model(torch.zeros(1, 3, 8, 8))  # the bug Hit-Detector's cost probe had
    with OnMeta():
        model(torch.zeros(1, 3, 8, 8, device="meta")).sum().item()


# -- on a GPU ----------------------------------------------------------------------------------------------

@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", SEARCHERS)
def test_searcher_runs_on_cuda(name):
    SEARCHERS[name]("cuda")
    torch.cuda.synchronize()



@cuda
@pytest.mark.cuda
def test_darts_cuda_graphs_replay_the_eager_search():
    from core.oneshot import DartsSearcher
    from core.testing import TinyClassification
    from core.zoo.darts import DartsSpace

    space = DartsSpace(C=4, layers=3, num_classes=10, in_channels=1, steps=2)
    runs = {}
    for graphs in (False, True):
        searcher = DartsSearcher(space, epochs=2, steps_per_epoch=6, batch_size=8, arch_lr=0.05, device="cuda",
                                 supernet={"C": 4, "layers": 3}, cuda_graphs=graphs, task=TinyClassification())
        runs[graphs] = (searcher.fit(None, digits()), searcher.history)
    assert runs[True][0] == runs[False][0]
    for a, b in zip(runs[True][1], runs[False][1]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4

TASK_TRAININGS = {
    "classification": ("configs/classification/quickstart.yaml", ["train.arch=mobilenetv2", "train.epochs=1"]),
    "detection": ("configs/detection/hitdet_shapes.yaml",
                  ["data.image_size=64", "data.train=8", "data.val=4", "data.test=4", "space.width=0.125",
                   "space.stage_blocks=[1,1,2,1]", "space.head_blocks=1", "train.epochs=1", "train.batch_size=4",
                   "detection.warmup_steps=1", "detection.draw=0"]),
    "super_resolution": ("configs/super_resolution/trilevel_x2.yaml",
                         ["data.hr_crop=48", "data.patch_size=12", "data.samples_per_epoch=16", "space.num_feat=8",
                          "space.path_cells=2", "space.ops_per_cell=2", "train.epochs=1", "train.batch_size=8",
                          "super_resolution.cost_output=[24,32]"]),
    "face_recognition": ("configs/face_recognition/mobilefacenet.yaml",
                         ["data.identities=6", "data.images_per_identity=4", "data.pairs=20", "data.image_size=16",
                          "train.epochs=1", "train.batch_size=8"]),
}


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("task", TASK_TRAININGS)
def test_task_final_training_runs_on_cuda(task, tmp_path):
    from core.cli import main

    config, overrides = TASK_TRAININGS[task]
    args = ["train", str(ROOT / config), *overrides, f"run.dir={tmp_path}", "train.accelerator=gpu",
            "train.devices=1"]
    if task == "detection":
        args.append(f"data.root={tmp_path / 'shapes'}")
    if task == "face_recognition":
        args.append(f"data.cache_dir={tmp_path / 'faces'}")
    assert main([*args, "--no-progress"]) == 0
