"""The quickstart path end to end through the CLI, and the one-line errors a user sees."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.cli import main
from core.engine.runs import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
QUICK = str(ROOT / "configs/classification/quickstart.yaml")
TINY = ["evaluator.epochs=1", "evaluator.sample_ratio=0.2", "search.budget=8", "strategy.population_size=4",
        "strategy.sample_size=1", "train.epochs=1", "retrain.baselines=[mobilenetv2_budget]"]


def _only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_search_train_test_export_profile(tmp_path, capsys):
    run = [f"run.dir={tmp_path}"]
    assert main(["search", QUICK, *TINY, *run, "--no-progress"]) == 0
    run_dir = _only(tmp_path / "quickstart", "*-search")
    for name in ("best_arch.json", "pareto.csv", "pareto.png", "journal.sqlite", "metrics.json", "config.yaml",
                 "searched/model.pt", "mobilenetv2_budget/model.pt"):
        assert (run_dir / name).is_file(), name
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [r["model"] for r in rows] == ["searched", "mobilenetv2_budget"]
    assert all(r["macs"] <= 600000 for r in rows)  # the baseline is sized to the search's MACs budget
    out = capsys.readouterr().out
    assert "latency_ms" in out and "searched" in out

    best = run_dir / "best_arch.json"
    assert main(["train", QUICK, f"train.arch={best}", "train.epochs=4", "train.batch_size=32", *run, "--no-progress"]) == 0
    model_pt = _only(tmp_path / "quickstart", "*-train") / "model.pt"
    payload = load_checkpoint(model_pt)  # weights_only load
    assert payload["arch"] == json.loads(best.read_text())

    assert main(["test", QUICK, f"test.checkpoint={model_pt}", "--no-progress"]) == 0
    metrics = json.loads((model_pt.parent / "test_metrics.json").read_text())
    assert 0.3 < metrics["accuracy"] <= 1.0  # four short epochs on digits are far above chance (0.1)

    assert main(["export", QUICK, f"export.checkpoint={model_pt}"]) == 0
    assert (model_pt.parent / "model.onnx").is_file() and (model_pt.parent / "model.ts").is_file()
    assert main(["profile", QUICK, "profile.arch=mobilenetv2", "profile.repeats=3"]) == 0
    assert "macs" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_continues_a_search(tmp_path):
    args = [*TINY, "retrain.enabled=false", f"run.dir={tmp_path}", "--no-progress"]
    assert main(["search", QUICK, *args]) == 0
    run_dir = _only(tmp_path / "quickstart", "*-search")
    first = json.loads((run_dir / "search.json").read_text())
    assert first["trials"] - first["infeasible"] == 8
    assert main(["search", QUICK, *[a.replace("search.budget=8", "search.budget=10") for a in args],
                 "--resume", str(run_dir)]) == 0
    summary = json.loads((run_dir / "search.json").read_text())
    # budget = archs trained; archs over the MACs constraint are journaled too but never trained
    assert summary["trials"] - summary["infeasible"] == 10 and summary["evaluations"] == 2
    assert summary["replayed"] == first["trials"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("override, expected", [
    ("strategy.populaton_size=5", "strategy.populaton_size: unknown key"),
    ("search.budget=many", "search.budget: expected int, got 'many'"),
    ("data.name=imagefolder data.root=/no/such/folder", "data.root: folder not found: /no/such/folder"),
    ("bogus=1", "bogus: unknown top-level key"),
])
def test_user_errors_are_one_line(override, expected):
    proc = _cli("search", QUICK, *override.split())
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr


@pytest.mark.parametrize("override, expected", [
    ("search.executor={name: dask}", "search.executor.name: unknown executor 'dask'"),
    ("search.executor={name: process, cpus: 2}", "search.executor.cpus: unknown key"),
    ("search.tell_order=random", "search.tell_order: expected submission or completion"),
    ("evaluator.timeout_s=-1", "evaluator.timeout_s: expected a number of seconds > 0"),
])
def test_parallel_search_settings_fail_in_one_line(override, expected, tmp_path, capsys):
    assert main(["search", QUICK, override, f"run.dir={tmp_path}", "--no-progress"]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_missing_config_file_names_the_path():
    proc = _cli("train", "configs/nope.yaml")
    assert proc.returncode == 2 and "config file not found" in proc.stderr and "nope.yaml" in proc.stderr


def test_export_matches_pytorch(tmp_path):
    from core.engine.export import export_model
    from core.zoo.mobile import digits_space

    space = digits_space()
    model = space.build(space.default(), num_classes=10).eval()
    rows = export_model(model, torch.randn(2, 1, 8, 8), tmp_path, ["onnx", "torchscript"])
    assert all(r["max_abs_diff"] < 1e-4 for r in rows), rows


@pytest.mark.slow
def test_search_on_a_process_pool_through_the_cli(tmp_path):
    args = [*TINY, "retrain.enabled=false", f"run.dir={tmp_path}", "search.executor={name: process, workers: 2}",
            "evaluator.timeout_s=120", "--no-progress"]
    assert main(["search", QUICK, *args]) == 0
    summary = json.loads((_only(tmp_path / "quickstart", "*-search") / "search.json").read_text())
    assert summary["trials"] - summary["infeasible"] == 8 and summary["evaluations"] == 8 and summary["failed"] == 0


@pytest.mark.slow
def test_multi_fidelity_and_one_shot_searches_through_the_cli(tmp_path):
    econas = str(ROOT / "configs/classification/econas_tabular.yaml")
    assert main(["search", econas, f"run.dir={tmp_path}", "search.budget=120", "--no-progress"]) == 0
    summary = json.loads((_only(tmp_path / "econas_tabular", "*-search") / "search.json").read_text())
    assert summary["report"]["epochs_used"] <= 120 and summary["report"]["segment_evaluations"] > 10

    darts = str(ROOT / "configs/classification/darts_digits.yaml")
    tiny = ["strategy.epochs=1", "strategy.supernet={C: 4, layers: 3}", "space.C=4", "space.layers=3",
            "retrain.enabled=false", f"run.dir={tmp_path}"]
    assert main(["search", darts, *tiny, "--no-progress"]) == 0
    run_dir = _only(tmp_path / "darts_digits", "*-search")
    from core.api import Arch
    from core.zoo.darts import DartsSpace

    arch = Arch.from_json((run_dir / "best_arch.json").read_text())
    assert DartsSpace(C=4, layers=3, num_classes=10, in_channels=1).is_valid(arch)
    assert (run_dir / "searcher.pt").is_file() and "history" in json.loads((run_dir / "search.json").read_text())
