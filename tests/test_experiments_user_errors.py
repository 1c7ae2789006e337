"""Reliability, round 3: a user error is refused before anything is written, and a run
that never trained does not block the corrected command.

In process (``python -m experiments`` prints these errors as one line: see
test_experiments_reliability.py); tiny FNNs on digits.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from absl import app, flags

from experiments import auto_tune, lesion, prune, train
from experiments.runtime.console import CommandError

TINY = ["--dataset=digits", "--model=fnn", "--depth=2", "--width=8", "--optimizer=adam",
        "--measure_samples=64", "--noexport", "--progress=none", "--epochs=1"]


@pytest.fixture
def fnn_run(parse, tmp_path) -> pathlib.Path:
    """A finished train run of an FNN (no residual blocks)."""
    path = tmp_path / "fnn"
    train.main(parse(train, *TINY, f"--run_dir={path}"))
    return path


@pytest.mark.parametrize("value, message", [
    ("inf", "learning_rate=inf is not finite in float32"),
    ("1e39", r"learning_rate=1e\+39 is not finite in float32"),
    ("1e-50", "learning_rate=1e-50 is 0 in float32"),
    ("nan", "learning_rate must be > 0, got nan"),
])
def test_a_learning_rate_outside_float32_is_refused_when_the_flags_are_parsed(
        parse, value, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        parse(train, *TINY, f"--learning_rate={value}")


@pytest.mark.parametrize("module, argv, error, message", [
    (train, [*TINY[:1], "--model=vgg", "--blocks=0,0,0,0", *TINY[4:]], app.UsageError,
     "blocks are all zero"),
    (train, [*TINY, "--measure_samples=5000"], CommandError,
     "--measure_samples=5000 is more than the digits training split holds"),
    (train, [*TINY, "--batch_size=5000"], CommandError, "fewer than batch_size=5000"),
    (auto_tune, [*TINY[:1], "--model=vgg", "--blocks=1,0,0,0", "--measure_samples=5000",
                 *TINY[6:]], CommandError, "--measure_samples=5000 is more than"),
    (lesion, ["--source_run={fnn}"], CommandError, "fnn-d2-w8 network, which has no residual"),
    (prune, ["--source_run={fnn}", "--noexport"], CommandError, "which has no residual blocks"),
], ids=["blocks-all-zero", "measure-samples", "batch-size", "auto-tune-measure-samples",
        "lesion-of-fnn", "prune-of-fnn"])
def test_a_user_error_is_refused_before_the_run_directory_is_made(
        parse, tmp_path, request, module, argv, error, message):
    if any("{fnn}" in a for a in argv):
        argv = [a.format(fnn=request.getfixturevalue("fnn_run")) for a in argv]
    run_dir = tmp_path / "runs" / "run"
    with pytest.raises(error, match=message):
        module.main(parse(module, *argv, f"--run_dir={run_dir}"))
    assert not (tmp_path / "runs").exists()


def test_a_non_finite_flag_is_never_written_as_null(tmp_path):
    from experiments.runtime import rundir
    with pytest.raises(rundir.RunDirError, match="--rate=inf is not a finite number"):
        rundir.RunDir(tmp_path / "run").start({"rate": float("inf"), "seed": 0})
    assert not (tmp_path / "run").exists()


def test_a_run_that_never_trained_is_started_anew_by_the_corrected_command(
        parse, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "seed1").mkdir(parents=True)
    (run_dir / "flags.json").write_text(json.dumps({"learning_rate": 10.0}))
    (run_dir / "seed1" / "state.json").write_text(
        json.dumps({"completed_epochs": 0, "history": []}))
    (run_dir / "metrics.csv").write_text("epoch\n0\n")
    train.main(parse(train, *TINY, f"--run_dir={run_dir}"))
    assert "never completed an epoch; starting it anew with these" in capsys.readouterr().out
    assert json.loads((run_dir / "flags.json").read_text())["learning_rate"] == 0.001
    assert not (run_dir / "seed1").exists()
    assert json.loads((run_dir / "results.json").read_text())["trials"][0]["epochs"] == 1

    (run_dir / "results.json").unlink()  # unfinished, but it trained: kept
    with pytest.raises(CommandError, match="holds a run started with other flags"):
        train.main(parse(train, *TINY, f"--run_dir={run_dir}", "--learning_rate=0.01"))


def test_a_run_records_its_environment_and_a_resume_under_another_says_so(
        parse, tmp_path, capsys):
    import importlib.metadata
    import os

    run_dir = tmp_path / "run"
    train.main(parse(train, *TINY, f"--run_dir={run_dir}"))
    recorded = json.loads((run_dir / "environment.json").read_text())
    assert recorded["keras_backend"] == "tensorflow"
    assert recorded["tensorflow"] == importlib.metadata.version("tensorflow")
    assert recorded["keras"] == importlib.metadata.version("keras")
    assert recorded["TF_ENABLE_ONEDNN_OPTS"] == os.environ["TF_ENABLE_ONEDNN_OPTS"]
    assert recorded["CB_KERAS_GRAPPLER"] == os.environ["CB_KERAS_GRAPPLER"]
    capsys.readouterr()

    (run_dir / "results.json").unlink()  # unfinished: resumed, not read
    (run_dir / "environment.json").write_text(json.dumps(
        {**recorded, "tensorflow": "2.0.0", "TF_ENABLE_ONEDNN_OPTS": "2"}))
    train.main(parse(train, *TINY, f"--run_dir={run_dir}"))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [
        f"train: warning: {run_dir} was started with TF_ENABLE_ONEDNN_OPTS=2, tensorflow=2.0.0 "
        f"(now TF_ENABLE_ONEDNN_OPTS={recorded['TF_ENABLE_ONEDNN_OPTS']}, "
        f"tensorflow={recorded['tensorflow']}); the epochs trained from here on may round "
        "differently from an uninterrupted run's."]
    assert (run_dir / "results.json").exists()
