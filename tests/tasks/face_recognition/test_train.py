"""PocketNet search, KD and multi-step KD, and the CLI round trip on tiny synthetic faces."""

import importlib.util
import json

import pytest
import torch

from tasks.face_recognition.task import FaceRecognitionTask
import yaml

from core.cli import main
from core.engine.data import DataSplits
from core.oneshot.darts import DartsSearcher
from tasks.face_recognition.distill import (
    TeacherSchedule,
    multistep_teacher_epoch,
    pocketnet_kd_loss,
    save_epoch_checkpoint,
)
from tasks.face_recognition.heads import ArcFace
from tasks.face_recognition.ops import FACE_PRIMITIVES
from tasks.face_recognition.space import PocketNetSpace, arch_to_genotype


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))


def test_multistep_schedule_loads_teacher_epoch_e_plus_1(tmp_path):
    for epoch in (1, 2, 3):
        net = _tiny_net()
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(epoch))
        save_epoch_checkpoint(tmp_path, epoch, net)
    schedule = TeacherSchedule(_tiny_net(), epochs_dir=tmp_path)
    schedule.check(3)
    assert [multistep_teacher_epoch(e) for e in range(3)] == [1, 2, 3]
    for student_epoch in range(3):
        teacher = schedule.load(student_epoch)
        assert schedule.loaded.name == f"epoch_{student_epoch + 1:03d}.pt"
        assert float(teacher[1].weight[0, 0]) == student_epoch + 1
        assert not teacher.training and not teacher[1].weight.requires_grad
    with pytest.raises(FileNotFoundError, match="epoch_004.pt"):
        schedule.check(4)
    plain = TeacherSchedule(_tiny_net(), checkpoint=tmp_path / "epoch_003.pt")
    assert all(plain.path_for(e).name == "epoch_003.pt" for e in range(5))


def test_kd_loss_is_ce_plus_100_mse_of_normalised_embeddings_and_falls():
    torch.manual_seed(0)
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    teacher, student, head = _tiny_net(1).eval(), _tiny_net(2), ArcFace(8, 4)
    t = teacher(x).detach()
    s = student(x)
    loss, parts = pocketnet_kd_loss(head(s, y), y, s, t, weight=100.0)
    manual = torch.nn.functional.cross_entropy(head(s, y), y) + 100 * (
        (torch.nn.functional.normalize(s, dim=1) - torch.nn.functional.normalize(t, dim=1)) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(manual.detach()), rel=1e-5)
    opt = torch.optim.SGD(list(student.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    first = parts["kd"]
    for _ in range(60):
        s = student(x)
        loss, parts = pocketnet_kd_loss(head(s, y), y, s, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert parts["kd"] < 0.5 * first


@pytest.mark.slow
def test_short_second_order_search_derives_a_valid_genotype():
    torch.manual_seed(0)
    x = torch.randn(24, 3, 16, 16)
    y = torch.arange(24) % 3
    data = DataSplits("tiny", torch.utils.data.TensorDataset(x, y), None, None, (3, 16, 16), num_classes=3)
    space = PocketNetSpace(C=4, layers=3, input_size=16, embedding_size=16, num_classes=3)
    searcher = DartsSearcher(space, task=FaceRecognitionTask({}), order=2, epochs=1, batch_size=6, steps_per_epoch=2, arch_lr=0.05,
                             supernet={"C": 4, "layers": 3, "stem_multiplier": 3})
    arch = searcher.fit(None, data)
    assert space.check(arch) == arch
    genotype = arch_to_genotype(arch)
    assert len(genotype.normal) == len(genotype.reduce) == 8
    assert {op for op, _ in genotype.normal + genotype.reduce} <= set(FACE_PRIMITIVES) - {"none"}
    moved = [max(abs(v - sum(w) / len(w)) for v in w) for w in searcher.alphas().values()]
    assert max(moved) > 1e-3  # the architecture step changed the mixture weights
    assert space.build(arch)(torch.zeros(2, 3, 16, 16)).shape == (2, 16)


def _config(tmp_path, name, **sections):
    cfg = {"task": "face_recognition", "seed": 0, "run": {"dir": str(tmp_path / "runs"), "name": name},
           "data": {"name": "face_synthetic", "identities": 6, "images_per_identity": 4, "pairs": 20,
                    "image_size": 16, "cache_dir": str(tmp_path / "cache")},
           "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "accelerator": "cpu", "log_every_n_steps": 1},
           "test": {"batch_size": 64}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_cli_teacher_then_multistep_kd_student_then_test(tmp_path, capsys):
    teacher_space = {"name": "face_backbone", "model": "iresnet18", "width": 0.125, "embedding_size": 16}
    assert main(["train", _config(tmp_path, "teacher", space=teacher_space), "--no-progress"]) == 0
    epochs = next((tmp_path / "runs" / "teacher").glob("*-train")) / "epochs"
    assert sorted(p.name for p in epochs.iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    student = _config(tmp_path, "student", space={"name": "pocketnet", "C": 4, "layers": 4, "embedding_size": 16},
                      face_recognition={"teacher": {"space": teacher_space, "epochs": str(epochs)}})
    assert main(["train", student, "train.arch=PocketNet", "--no-progress"]) == 0
    run = next((tmp_path / "runs" / "student").glob("*-train"))
    val_accuracy = json.loads((run / "metrics.json").read_text())["val_accuracy"]
    assert 0.5 <= val_accuracy <= 1.0  # 10-fold verification picks its threshold: never below chance
    assert main(["test", student, f"test.checkpoint={run / 'model.pt'}"]) == 0
    for name in ("verification.csv", "roc.png", "embeddings.npz", "test_metrics.json"):
        assert (run / name).is_file()
    assert "synthetic_test" in (run / "verification.csv").read_text()
    if importlib.util.find_spec("onnxruntime"):  # the `export` extra: ONNX of the embedding network, checked
        assert main(["export", student, f"export.checkpoint={run / 'model.pt'}", "export.formats=[onnx]"]) == 0
        assert (run / "model.onnx").is_file()
    # a multi-step student longer than the teacher's run fails before training, naming the missing epoch
    assert main(["train", student, "train.arch=PocketNet", "train.epochs=3", "--no-progress"]) == 2
    assert "epoch_003.pt" in capsys.readouterr().err
