"""Bad inputs against `archforge search|train|test|export|profile`, and how each one ends.

    python benchmarks/bad_inputs.py            # every case, then the table of outcomes
    python benchmarks/bad_inputs.py --kills 3  # plus kill-and-resume cycles of a journaled search

Each case is what a hostile but realistic user could hand the tools: a config
that names code to run, a data file that is a crafted pickle, a path that
leaves the run folder, malformed YAML, out-of-range numbers, misspelt metrics,
corrupt images, truncated records, damaged journals, files that are not
checkpoints. A case runs `core.cli.main` in this process and is classed as

- `clean`: the expected exit code, exactly one line on stderr, naming the key
  or path it is about (and for error cases no run folder left behind);
- `traceback`: an exception escaped `main` (a bug: a user mistake must never
  print one);
- `silent`: exit 0 where the input should have been refused (or, with
  `--timeout`, still working on it when the time is up), or a result that
  misses the check of a case that should succeed;
- `unclear`: a non-zero exit whose stderr is not one line naming the cause;
- `code ran`: a security case's payload ran (its marker file exists).

`tests/test_bad_inputs.py` runs the same cases and asserts each is `clean`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICK = "configs/classification/quickstart.yaml"
SR = "configs/super_resolution/trilevel_x2.yaml"
TINY_SEARCH = ["evaluator.epochs=1", "evaluator.sample_ratio=0.1", "search.budget=2", "strategy.population_size=2",
               "strategy.sample_size=1", "retrain.enabled=false"]
TINY_SR = ["data.hr_crop=48", "data.patch_size=12", "data.samples_per_epoch=16", "space.num_feat=8",
           "space.path_cells=2", "space.ops_per_cell=2", "super_resolution.cost_output=[24,32]",
           "super_resolution.side_by_side=1"]


@dataclass
class Case:
    """One bad input. `config` is a repo path or a dict written to `{tmp}/config.yaml`; `{tmp}` in overrides,
    config strings and `expect` is the case's scratch folder; `setup(tmp)` writes the files the case needs."""

    id: str
    kind: str
    command: str
    config: str | dict
    overrides: list[str] = field(default_factory=list)
    expect: str = ""
    code: int = 2
    setup: Callable[[Path], Any] | None = None
    marker: str | None = None  # a file the payload would create (security cases)
    check: Callable[[str, Path], bool] | None = None  # a success case's check of stdout and files
    resume: str | None = None  # --resume folder (relative to tmp)
    run_dir: bool = True  # add run.dir={tmp}/runs
    leaves_run: bool = False  # the error comes after the run started: its folder (journal, logs) stays


# -- files the cases need ------------------------------------------------------------------------------------
def _png(path: Path, size: int = 12, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _image_folder(tmp: Path, bad: bytes | None = None) -> None:
    for c in ("a", "b"):
        for i in range(3):
            _png(tmp / "imgs" / "train" / c / f"{i}.png", seed=i)
    if bad is not None:
        (tmp / "imgs" / "train" / "a" / "bad.jpg").write_bytes(bad)


class _Payload:
    """A pickle whose loading would run `touch <marker>` (what a crafted data file does)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_pickle(path: Path, marker: Path, wrap: Callable[[Any], Any] = lambda p: p) -> None:
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(wrap(_Payload(marker)), protocol=2))


def _faces(tmp: Path, bin_bytes: bytes | None = None, truncate_rec: bool = False, keep_property: bool = False):
    """A 2-identity insightface folder (train.rec/idx, property) and `lfw.bin` (or `bin_bytes`)."""
    import numpy as np

    from tasks.face_recognition.recordio import encode_image, write_face_rec
    from tasks.face_recognition.verification import write_bin

    root = tmp / "faces"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    write_face_rec(root / "train.rec", images, [0, 0, 1, 1])
    if bin_bytes is None:
        write_bin(root / "lfw.bin", [encode_image(im) for im in images] * 5, [True, False] * 5)
    else:
        (root / "lfw.bin").write_bytes(bin_bytes)
    if truncate_rec:
        data = (root / "train.rec").read_bytes()
        last = int((root / "train.idx").read_text().split()[-1 - 2 * 2])  # the last image record's offset
        (root / "train.rec").write_bytes(data[:last + 40])
        if not keep_property:
            (root / "property").unlink()
    return root


def _face_config(tmp: Path) -> dict:
    return {"_base_": str(ROOT / "configs/face_recognition/_base_.yaml"),
            "data": {"name": "face_recordio", "root": str(tmp / "faces"), "image_size": 16,
                     "verification": ["lfw"]},
            "space": {"name": "face_backbone", "model": "iresnet18", "width": 0.125, "embedding_size": 8},
            "train": {"epochs": 1, "batch_size": 4}, "face_recognition": {"fars": [0.1]}}


def _journal(tmp: Path, trials: int = 300) -> Path:
    """A real search's run folder: a journal of `trials` onemax trials (several SQLite pages)."""
    from core.evaluation import Result
    from core.journal import Journal
    from core.api import Arch

    run = tmp / "run"
    with Journal(run / "journal.sqlite") as journal:
        journal.set_meta("fingerprint", "x")
        for i in range(trials):
            journal.record(Arch({"i": i, "pad": "x" * 200}), Result({"accuracy": i / trials}), "x")
    for extra in ("journal.sqlite-wal", "journal.sqlite-shm"):
        (run / extra).unlink(missing_ok=True)
    return run


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2 + 100]))
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "page":  # overwrite the middle of the second page (a b-tree page header) with junk
        page = int.from_bytes(data[16:18], "big") or 65536
        data[page: page + 64] = b"\xff" * 64
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")


def _sr_model(tmp: Path) -> Path:
    """An (untrained) x2 SR model saved the way `archforge train` saves one."""
    from core.pipeline import load_task, save_model
    from core.engine.config import load_config

    cfg = load_config(ROOT / SR, TINY_SR)
    task = load_task(cfg)
    data = task.data()
    space = task.space(data)
    arch = space.default()
    path = tmp / "sr" / "model.pt"
    save_model(path, cfg, arch, space.build(arch), {})
    return path


def _my_photos(tmp: Path) -> None:
    for i in range(2):
        _png(tmp / "mine" / f"p{i}.png", size=24, seed=10 + i)


def _lock_holder(tmp: Path) -> subprocess.Popen:
    """Another process holding the journal of `tmp/run` (as a running search would)."""
    _journal(tmp, 3)
    code = ("import sys, time; from core.journal import Journal; j = Journal(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp / "run" / "journal.sqlite")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.readline()
    return proc


# -- the cases -----------------------------------------------------------------------------------------------
def _dna(teacher: dict) -> dict:
    return {"task": "classification", "data": {"name": "digits"}, "space": {"name": "dna_digits"},
            "strategy": {"name": "dna", "teacher": teacher}}


TOUCH = "touch {tmp}/pwned"

CASES: list[Case] = [
    # security: no code runs from a config or a data file; no writes outside run.dir
    Case("teacher-import-path", "security", "search",
         _dna({"name": "subprocess:run", "kwargs": {"args": TOUCH, "shell": True}}),
         expect="strategy.teacher.name", marker="pwned"),
    Case("teacher-os-system", "security", "search", _dna({"name": "os:system", "kwargs": {"command": TOUCH}}),
         expect="strategy.teacher.name", marker="pwned"),
    Case("teacher-builtins-exec", "security", "search",
         _dna({"name": "builtins:exec", "kwargs": {"source": "import os; os.system('" + TOUCH + "')"}}),
         expect="strategy.teacher.name", marker="pwned"),
    Case("yaml-python-tag", "security", "train", "{tmp}/tagged.yaml", expect="tagged.yaml:1:",
         setup=lambda t: (t / "tagged.yaml").write_text(
             f"task: !!python/object/apply:os.system ['{TOUCH.format(tmp=t)}']\n"),
         marker="pwned"),
    Case("bin-pickle-payload", "security", "train", "face", expect="lfw.bin",
         setup=lambda t: _faces(t, bin_bytes=b"") and _evil_pickle(t / "faces" / "lfw.bin", t / "pwned",
                                                                     lambda p: ([p, b"x"], [True])),
         marker="pwned"),
    Case("cifar-pickle-payload", "security", "train", QUICK,
         ["data.name=cifar", "data.root={tmp}/cifar"], expect="data_batch_1",
         setup=lambda t: _evil_pickle(t / "cifar" / "cifar-10-batches-py" / "data_batch_1", t / "pwned",
                                      lambda p: {"data": p, "labels": [0]}), marker="pwned"),
    Case("checkpoint-pickle-payload", "security", "test", QUICK, ["test.checkpoint={tmp}/evil.pt"],
         expect="evil.pt", setup=lambda t: _evil_pickle(t / "evil.pt", t / "pwned"), marker="pwned"),
    Case("run-name-traversal", "security", "train", QUICK, ["run.name=../escaped"], expect="run.name",
         marker="escaped"),
    Case("run-name-absolute", "security", "train", QUICK, ["run.name={tmp}/escaped"], expect="run.name",
         marker="escaped"),
    # config files and overrides
    Case("yaml-unclosed-bracket", "config", "search", "{tmp}/c.yaml", expect="at line 3, column 11",
         setup=lambda t: (t / "c.yaml").write_text(f"_base_: {ROOT / QUICK}\nsearch:\n  budget: [1, 2\n")),
    Case("yaml-duplicate-key", "config", "search", "{tmp}/c.yaml", expect="c.yaml:3:1: found duplicate key seed",
         setup=lambda t: (t / "c.yaml").write_text(f"_base_: {ROOT / QUICK}\nseed: 1\nseed: 2\n")),
    Case("yaml-tab", "config", "search", "{tmp}/c.yaml", expect="c.yaml:3:1: a tab character",
         setup=lambda t: (t / "c.yaml").write_text(f"_base_: {ROOT / QUICK}\nsearch:\n\tbudget: 3\n")),
    Case("yaml-top-level-list", "config", "search", "{tmp}/c.yaml", expect="c.yaml:1:1",
         setup=lambda t: (t / "c.yaml").write_text("- task: classification\n")),
    Case("yaml-not-utf8", "config", "search", "{tmp}/c.yaml", expect="c.yaml",
         setup=lambda t: (t / "c.yaml").write_bytes(b"task: \xff\xfe classification\n")),
    Case("config-missing", "config", "search", "{tmp}/nope.yaml", expect="nope.yaml"),
    Case("base-missing", "config", "search", "{tmp}/c.yaml", expect="nope.yaml",
         setup=lambda t: (t / "c.yaml").write_text("_base_: nope.yaml\n")),
    Case("base-cycle", "config", "search", "{tmp}/c.yaml", expect="_base_ cycle",
         setup=lambda t: (t / "c.yaml").write_text("_base_: c.yaml\n")),
    Case("override-no-equals", "config", "search", QUICK, ["search.budget"], expect="search.budget"),
    Case("override-empty-key", "config", "search", QUICK, ["=3"], expect="'=3'"),
    Case("override-bad-yaml", "config", "search", QUICK, ["search.budget=[1,"], expect="search.budget=[1,"),
    Case("override-bad-interpolation", "config", "search", QUICK, ["search.budget=${nope}"],
         expect="search.budget"),
    Case("unknown-top-level-key", "config", "search", QUICK, ["bogus=1"], expect="bogus: unknown top-level key"),
    Case("unknown-section-key", "config", "search", QUICK, ["strategy.populaton_size=5"],
         expect="strategy.populaton_size: unknown key"),
    Case("wrong-type", "config", "search", QUICK, ["search.budget=many"], expect="search.budget: expected int"),
    Case("unknown-task", "config", "search", QUICK, ["task=segmentation"], expect="task"),
    Case("unknown-strategy", "config", "search", QUICK, ["strategy.name=annealing"], expect="strategy.name"),
    Case("missing-required-key", "config", "search", QUICK, ["data.name=imagefolder"], expect="data.root: missing"),
    Case("nested-kwargs-unknown", "config", "profile", "configs/detection/hitdet_shapes.yaml",
         ["space.detector_kwargs.foo=1"], expect="space.detector_kwargs.foo"),
    Case("renamed-data-keeps-no-old-keys", "config", "search", "{tmp}/c.yaml",
         ["data.name=imagefolder", "data.root={tmp}/no_such_folder"], expect="data.root: folder not found",
         setup=lambda t: (t / "c.yaml").write_text(f"_base_: {ROOT / QUICK}\ndata: {{name: digits, "
                                                   "test_fraction: 0.3}\n")),
    # ranges
    *[Case(f"range-{o.split('=')[0]}", "range", "search", QUICK, [o], expect=o.split("=")[0])
      for o in ("data.val_fraction=-0.2", "train.epochs=0", "evaluator.epochs=0", "search.budget=0",
                "search.batch_size=0", "train.lr=0", "train.batch_size=-8", "test.batch_size=0", "seed=-1",
                "threads=0", "evaluator.sample_ratio=1.5", "train.momentum=1.5", "search.journal_durability=maybe",
                "export.formats=[pdf]", "objective.direction=up")],
    Case("range-profile.batch", "range", "profile", QUICK, ["profile.batch=-1"], expect="profile.batch"),
    # checked before the search spends its budget
    Case("objective-metric-misspelt", "search", "search", QUICK, ["objective.metric=acuracy"],
         expect="objective.metric"),
    Case("constraint-metric-not-reported", "search", "search", QUICK, ['objective.constraints=["latency_ms <= 5"]'],
         expect="objective.constraints"),
    Case("constraint-malformed", "search", "search", QUICK, ['objective.constraints=["macs <<= 5"]'],
         expect="objective.constraints"),
    Case("baseline-unknown", "search", "search", QUICK, ["retrain.baselines=[resnet9000]"],
         expect="retrain.baselines"),
    Case("profile-arch-unknown", "search", "profile", QUICK, ["profile.arch=mobilenetv3"], expect="profile.arch"),
    Case("arch-file-missing", "search", "train", QUICK, ["train.arch={tmp}/best_arch.json"],
         expect="best_arch.json"),
    Case("arch-file-garbage", "search", "train", QUICK, ["train.arch={tmp}/best_arch.json"],
         expect="train.arch", setup=lambda t: (t / "best_arch.json").write_text("{not json")),
    Case("arch-file-other-space", "search", "train", QUICK, ["train.arch={tmp}/best_arch.json"],
         expect="train.arch", setup=lambda t: (t / "best_arch.json").write_text('{"normal.node0.op": "x"}')),
    Case("arch-from-another-space-config", "search", "profile", QUICK, ["profile.arch={tmp}/run/best_arch.json"],
         expect="profile.arch", setup=lambda t: _arch_with_config(t)),
    Case("constraint-unsatisfiable", "search", "search", QUICK,
         [*TINY_SEARCH, 'objective.constraints=["macs <= 1000"]', "search.max_rejected=30"],
         expect="macs <= 1000", leaves_run=True),
    Case("every-candidate-fails", "search", "search", QUICK, [*TINY_SEARCH, "evaluator.lr=1e30"],
         expect="x failed: loss is not finite", code=1, leaves_run=True),
    # data files
    Case("imagefolder-corrupt-image-train", "data", "train", QUICK,
         ["data.name=imagefolder", "data.root={tmp}/imgs", "data.image_size=8", "data.val_fraction=0.4",
          "train.epochs=1"],
         expect="bad.jpg", setup=lambda t: _image_folder(t, b"\xff\xd8\xff\xe0 not a jpeg"), leaves_run=True),
    Case("imagefolder-corrupt-image-search", "data", "search", QUICK,
         ["data.name=imagefolder", "data.root={tmp}/imgs", "data.image_size=8", "data.val_fraction=0.4",
          *TINY_SEARCH, "evaluator.sample_ratio=1.0"],
         expect="bad.jpg", setup=lambda t: _image_folder(t, b"GIF89a garbage"), leaves_run=True),
    Case("imagefolder-corrupt-image-worker", "data", "train", QUICK,
         ["data.name=imagefolder", "data.root={tmp}/imgs", "data.image_size=8", "data.val_fraction=0.4",
          "train.epochs=1", "train.num_workers=1"],
         expect="bad.jpg: not a readable image", setup=lambda t: _image_folder(t, b"garbage"), leaves_run=True),
    Case("imagefolder-truncated-png", "data", "train", QUICK,
         ["data.name=imagefolder", "data.root={tmp}/imgs", "data.image_size=8", "data.val_fraction=0.4",
          "train.epochs=1"],
         expect="bad.jpg", setup=lambda t: _truncated_png(t), leaves_run=True),
    Case("imagefolder-empty", "data", "train", QUICK, ["data.name=imagefolder", "data.root={tmp}/empty"],
         expect="data.train_dir", setup=lambda t: (t / "empty" / "train").mkdir(parents=True)),
    Case("bin-entries-not-images", "data", "train", "face", expect="lfw.bin: entry 0",
         setup=lambda t: _faces(t, bin_bytes=_bin_of(b"not an image"))),
    Case("bin-garbage", "data", "train", "face", expect="lfw.bin", setup=lambda t: _faces(t, os.urandom(256))),
    Case("bin-wrong-structure", "data", "train", "face", expect="lfw.bin",
         setup=lambda t: _faces(t, bin_bytes=__import__("pickle").dumps({"bins": 1}, protocol=2))),
    Case("rec-truncated", "data", "train", "face", expect="train.rec: record 4",
         setup=lambda t: _faces(t, truncate_rec=True)),
    Case("rec-truncated-in-training", "data", "train", "face", expect="train.rec: record 4",
         setup=lambda t: _faces(t, truncate_rec=True, keep_property=True), leaves_run=True),
    Case("cifar-garbage", "data", "train", QUICK, ["data.name=cifar", "data.root={tmp}/cifar"],
         expect="data_batch_1", setup=lambda t: _cifar_garbage(t)),
    Case("coco-not-json", "data", "train", "configs/detection/hitdet_coco.yaml",
         ["data.root={tmp}/coco"], expect="data.train_ann", setup=lambda t: _coco_garbage(t)),
    Case("voc-xml-garbage", "data", "train", "configs/detection/hitdet_shapes.yaml",
         ["data.name=voc", "data.root={tmp}/voc"], expect="a.xml: not valid XML", setup=lambda t: _voc_garbage(t)),
    Case("sr-folder-missing", "data", "train", SR, [*TINY_SR[3:], "data.name=sr_folders", "data.train={tmp}/nope",
                                                     "data.test={tmp}/nope"], expect="data.train"),
    Case("sr-corrupt-image", "data", "train", SR,
         [*TINY_SR[3:], "data.name=sr_folders", "data.train={tmp}/mine", "data.test={tmp}/mine"],
         expect="p1.png", setup=lambda t: (_my_photos(t), (t / "mine" / "p1.png").write_bytes(b"\x89PNG junk"))),
    # checkpoints
    *[Case(f"checkpoint-{name}", "checkpoint", "test", QUICK, ["test.checkpoint={tmp}/model.pt"],
           expect="model.pt", setup=make) for name, make in (
        ("random-bytes", lambda t: (t / "model.pt").write_bytes(os.urandom(512))),
        ("text", lambda t: (t / "model.pt").write_text("hello\n")),
        ("empty", lambda t: (t / "model.pt").write_bytes(b"")),
        ("foreign-state-dict", lambda t: __import__("torch").save({"w": __import__("torch").zeros(2)},
                                                                    t / "model.pt")),
        ("truncated", lambda t: _truncated_checkpoint(t)))],
    Case("checkpoint-missing", "checkpoint", "test", QUICK, ["test.checkpoint={tmp}/nope.pt"], expect="nope.pt"),
    Case("export-checkpoint-garbage", "checkpoint", "export", QUICK, ["export.checkpoint={tmp}/model.pt"],
         expect="model.pt", setup=lambda t: (t / "model.pt").write_bytes(os.urandom(64))),
    Case("sr-test-other-scale", "checkpoint", "test", SR, ["test.checkpoint={tmp}/sr/model.pt", *TINY_SR,
                                                            "super_resolution.scale=4"],
         expect="super_resolution.scale", setup=_sr_model),
    # journals
    *[Case(f"journal-{how}", "journal", "search", QUICK, TINY_SEARCH, expect="journal.sqlite", resume="run",
           setup=lambda t, how=how: _damage(_journal(t) / "journal.sqlite", how))
      for how in ("truncate", "garbage", "page", "empty")],
    Case("resume-missing-folder", "journal", "search", QUICK, TINY_SEARCH, expect="nope", resume="nope"),
    Case("resume-locked", "journal", "search", QUICK, TINY_SEARCH, expect="in use by another archforge process",
         resume="run", setup=_lock_holder),
    # silent wrong results that must now be right (exit 0, checked)
    Case("sr-test-on-my-folder", "silent", "test", SR,
         ["test.checkpoint={tmp}/sr/model.pt", *TINY_SR, "data.test_sets={mine: {tmp}/mine}"], code=0,
         setup=lambda t: (_sr_model(t), _my_photos(t)),
         check=lambda out, t: "mine (2 images)" in out and (t / "sr" / "side_by_side" / "mine_p0.png").is_file()),
]


def _bin_of(entry: bytes) -> bytes:
    import pickle

    return pickle.dumps(([entry] * 20, [True, False] * 5), protocol=2)


def _truncated_png(tmp: Path) -> None:
    _image_folder(tmp)
    _png(tmp / "big.png", size=64, seed=3)
    data = (tmp / "big.png").read_bytes()
    (tmp / "imgs" / "train" / "a" / "bad.jpg").write_bytes(data[: len(data) // 2])


def _truncated_checkpoint(tmp: Path) -> None:
    import torch

    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "format": "archforge-model-1"}, tmp / "full.pt")
    data = (tmp / "full.pt").read_bytes()
    (tmp / "model.pt").write_bytes(data[: len(data) // 2])


def _cifar_garbage(tmp: Path) -> None:
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(os.urandom(300))


def _coco_garbage(tmp: Path) -> None:
    (tmp / "coco" / "annotations").mkdir(parents=True)
    (tmp / "coco" / "annotations" / "instances_train2017.json").write_text("{\"images\": [1, 2")
    (tmp / "coco" / "annotations" / "instances_val2017.json").write_text("{}")


def _voc_garbage(tmp: Path) -> None:
    (tmp / "voc" / "ImageSets" / "Main").mkdir(parents=True)
    (tmp / "voc" / "Annotations").mkdir()
    (tmp / "voc" / "ImageSets" / "Main" / "trainval.txt").write_text("a\n")
    (tmp / "voc" / "Annotations" / "a.xml").write_text("<annotation><size><width>3</wid")


def _arch_with_config(tmp: Path) -> None:
    """An arch file from a search whose space was built wider than the quickstart's."""
    from core.engine.config import load_config
    from core.engine.config import dump_config

    run = tmp / "run"
    run.mkdir()
    cfg = load_config(ROOT / QUICK, ["space.name=mobile_cifar"])
    dump_config(cfg, run / "config.yaml")
    (run / "best_arch.json").write_text("{}")


# -- running a case --------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    error: str | None  # the traceback of an exception that escaped main
    marker_found: bool
    new_run_folders: list[str]
    check_ok: bool | None

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _fmt(value: Any, tmp: Path) -> Any:
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: _fmt(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_fmt(v, tmp) for v in value]
    return value


def _run_folders(tmp: Path) -> set[str]:
    runs = tmp / "runs"
    return {str(p.relative_to(tmp)) for p in runs.glob("*/*") if p.is_dir()} if runs.is_dir() else set()


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout


def run_case(case: Case, tmp: Path, timeout: int = 0) -> Outcome:
    """Set the case up in `tmp`, run `core.cli.main` in this process, and record how it ended (`timeout` > 0:
    stop a run still going after that many seconds; it is recorded as having accepted the input)."""
    import signal

    import yaml

    from core.cli import main

    held = case.setup(tmp) if case.setup else None
    try:
        if case.config == "face":
            config = tmp / "config.yaml"
            config.write_text(yaml.safe_dump(_face_config(tmp)))
        elif isinstance(case.config, dict):
            config = tmp / "config.yaml"
            config.write_text(yaml.safe_dump(_fmt(case.config, tmp)))
        elif "{tmp}" in case.config:
            config = Path(_fmt(case.config, tmp))
        else:
            config = ROOT / case.config
        argv = [case.command, str(config), *_fmt(case.overrides, tmp), "--no-progress"]
        if case.run_dir:
            argv.insert(2, f"run.dir={tmp / 'runs'}")
        if case.resume:
            argv += ["--resume", str(tmp / case.resume)]
        before = _run_folders(tmp)
        out, err = io.StringIO(), io.StringIO()
        code, error = None, None
        if timeout:
            signal.signal(signal.SIGALRM, _alarm)
            signal.alarm(timeout)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except _Timeout:
                code, error = None, "timeout"
            except BaseException:  # noqa: BLE001 - recorded, classed as a traceback
                error = traceback.format_exc()
            finally:
                if timeout:
                    signal.alarm(0)
        check_ok = case.check(out.getvalue(), tmp) if case.check and code == 0 else None
        return Outcome(code, out.getvalue(), err.getvalue(), error,
                       bool(case.marker) and (tmp / case.marker).exists(),
                       sorted(_run_folders(tmp) - before), check_ok)
    finally:
        if isinstance(held, subprocess.Popen):
            held.kill()
            held.wait()


def classify(case: Case, outcome: Outcome) -> str:
    expect = case.expect
    if outcome.marker_found:
        return "code ran"
    if outcome.error == "timeout":  # still working after the time limit: the input was accepted
        return "silent"
    if outcome.error is not None:
        return "traceback"
    if case.code == 0:
        return "clean" if outcome.code == 0 and outcome.check_ok else "silent"
    if outcome.code == 0:
        return "silent"
    lines = outcome.stderr_lines
    left = outcome.new_run_folders and not case.leaves_run
    if outcome.code != case.code or len(lines) != 1 or expect not in lines[0] or left:
        return "unclear"
    return "clean"


def kill_and_resume(cycles: int, workdir: Path) -> list[bool]:
    """Kill a journaled search (SIGKILL) at random points, resume it, and compare with an uninterrupted run."""
    import random
    import sqlite3

    script = ROOT / "tests/core/kill_resume_script.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def rows(run: Path) -> list[tuple]:
        with sqlite3.connect(run / "journal.sqlite") as db:
            return db.execute("SELECT trial, arch_key, status, metrics FROM trials ORDER BY trial").fetchall()

    full = workdir / "full"
    full.mkdir()
    subprocess.run([sys.executable, str(script), str(full), "40", "3", "0"], env=env, check=True, cwd=ROOT)
    expected = rows(full)
    results, rng = [], random.Random(0)
    for k in range(cycles):
        run = workdir / f"killed{k}"
        run.mkdir()
        proc = subprocess.Popen([sys.executable, str(script), str(run), "40", "3", "0.05"], env=env, cwd=ROOT)
        target, deadline = rng.randint(3, 30), time.time() + 120
        while time.time() < deadline:
            if (run / "journal.sqlite").is_file():
                try:
                    if len(rows(run)) >= target:
                        break
                except sqlite3.Error:
                    pass
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        subprocess.run([sys.executable, str(script), str(run), "40", "3", "0"], env=env, check=True, cwd=ROOT)
        results.append(rows(run) == expected)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=0, help="kill-and-resume cycles to run as well")
    parser.add_argument("--only", help="run the cases whose id contains this text")
    parser.add_argument("--timeout", type=int, default=0,
                        help="seconds after which a case still running counts as having accepted its input "
                             "(for measuring older versions, which train on some bad inputs)")
    args = parser.parse_args(argv)
    os.environ.setdefault("ARCHFORGE_NO_PROGRESS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    rows = []
    for case in CASES:
        if args.only and args.only not in case.id:
            continue
        tmp = Path(tempfile.mkdtemp(prefix="bad_input_"))
        start = time.perf_counter()
        outcome = run_case(case, tmp, args.timeout)
        verdict = classify(case, outcome)
        first = (outcome.error or "").strip().splitlines()[-1:] or outcome.stderr_lines[:1] or [""]
        rows.append((case, verdict, time.perf_counter() - start))
        print(f"{verdict:9s} {case.kind:10s} {case.id:36s} {time.perf_counter() - start:5.1f} s  {first[0][:110]}",
              flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    kinds = list(dict.fromkeys(c.kind for c, _, _ in rows))
    verdicts = ["clean", "traceback", "silent", "unclear", "code ran"]
    print(f"\n{'kind':10s} {'cases':>5s} " + " ".join(f"{v:>9s}" for v in verdicts))
    for kind in kinds + ["all"]:
        counts = Counter(v for c, v, _ in rows if kind in ("all", c.kind))
        print(f"{kind:10s} {sum(counts.values()):5d} " + " ".join(f"{counts[v]:9d}" for v in verdicts))
    print(f"{sum(t for _, _, t in rows):.0f} s in all")
    if args.kills:
        with tempfile.TemporaryDirectory() as workdir:
            survived = kill_and_resume(args.kills, Path(workdir))
        print(f"kill -9 and resume: {sum(survived)} of {len(survived)} journals identical to an uninterrupted run")
    return 0 if all(v == "clean" for _, v, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
