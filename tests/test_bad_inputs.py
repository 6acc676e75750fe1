"""Every bad input of `benchmarks/bad_inputs.py` ends with one clean line, and nothing in a config or data file runs.

Each case runs `core.cli.main` in this process: the exit code is the one expected, stderr is exactly one line
naming the key or path, no run folder is left behind by a failed start, and a security case's payload (a
`touch` of a marker file) never ran. Locks, Ctrl-C and kills need a second process and get their own tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bad_inputs import CASES, QUICK, TINY_SEARCH, classify, run_case  # noqa: E402
from core.cli import main  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_clean_line(case, tmp_path):
    outcome = run_case(case, tmp_path)
    assert outcome.error is None, outcome.error  # no traceback escaped main
    if case.marker:
        assert not (tmp_path / case.marker).exists(), "the payload ran"
    assert outcome.code == case.code, (outcome.code, outcome.stderr)
    if case.code == 0:  # a silent wrong result that must now be right
        assert outcome.check_ok, outcome.stdout
        return
    lines = outcome.stderr_lines
    assert len(lines) == 1, outcome.stderr
    assert case.expect in lines[0], lines[0]
    if not case.leaves_run:
        assert outcome.new_run_folders == [], outcome.new_run_folders
    assert classify(case, outcome) == "clean"


def test_every_kind_of_bad_input_is_covered():
    kinds = {c.kind for c in CASES}
    assert {"security", "config", "range", "search", "data", "checkpoint", "journal", "silent"} <= kinds
    assert sum(c.kind == "security" and c.marker is not None for c in CASES) >= 8


SLOW = ["evaluator.epochs=20", "retrain.enabled=false"]  # candidates that take seconds each


def _search(run_dir: Path) -> subprocess.Popen:
    """A quickstart search in a subprocess (one thread), busy evaluating when the test acts."""
    args = [sys.executable, "-m", "core.cli", "search", QUICK, f"run.dir={run_dir}", "search.budget=50", *SLOW,
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_trials(run_dir: Path, proc: subprocess.Popen, n: int = 1, timeout: float = 120) -> Path:
    import sqlite3

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for journal in run_dir.glob("quickstart/*/journal.sqlite"):
            try:
                with sqlite3.connect(journal) as db:
                    if db.execute("SELECT COUNT(*) FROM trials WHERE status='ok'").fetchone()[0] >= n:
                        return journal.parent
            except sqlite3.Error:
                pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no trial journaled in time: {proc.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_second_process_on_a_run_folder_stops_at_once_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    proc = _search(tmp_path)
    try:
        run = _wait_for_trials(tmp_path, proc)
        start = time.perf_counter()
        assert main(["search", QUICK, *TINY_SEARCH, "--resume", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another archforge process" in err[0] and "journal.sqlite" in err[0]
        assert time.perf_counter() - start < 15  # before any evaluation
    finally:
        proc.kill()  # SIGKILL: the OS drops the lock with the process
        proc.wait()
    # the same search, resumed: the journaled trial is replayed, nothing is evaluated
    assert main(["search", QUICK, *SLOW, "search.budget=1", "--resume", str(run), "--no-progress"]) == 0
    assert "0 evaluated now" in capsys.readouterr().out


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume(tmp_path):
    proc = _search(tmp_path)
    run = _wait_for_trials(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted; continue with: archforge search" in lines[0], err
    assert f"--resume {run}" in lines[0]
