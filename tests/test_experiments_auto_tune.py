"""`python -m experiments auto_tune`: the run directory, SIGKILL and resume, flag errors.

A tiny learning rate forces the conflict (see tests/test_autotune.py): with
--learning_rate=1e-7 the a^L of every network is one bundle, so attempt 0
(blocks 1,1,1,1) restarts after epoch 1 as 0,1,1,1; --max_restarts=1 then
lets attempt 1 train all its epochs unchecked.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import pytest
from absl import app, flags

from experiments import auto_tune

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGV = ["--dataset=digits", "--model=vgg", "--blocks=1,1,1,1", "--epochs=4",
        "--check_window=1", "--max_restarts=1", "--learning_rate=1e-7",
        "--measure_samples=64", "--test_every=2", "--latency_repeats=2", "--noaugment"]
KILL_TIMEOUT_S = 240


@pytest.fixture
def parse():
    """Parse argv for the auto_tune module; flags are reset after the test."""
    def _parse(*argv: str) -> list[str]:
        FLAGS.unparse_flags()
        return FLAGS([auto_tune.__name__, *argv])
    yield _parse
    FLAGS.unparse_flags()


def state_of(path: pathlib.Path) -> dict:
    """A JSON file's content, {} while it does not exist."""
    return json.loads(path.read_text()) if path.exists() else {}


def start_and_kill_in_attempt1(run_dir: pathlib.Path) -> None:
    """Start the command; SIGKILL it once attempt 1 has committed an epoch but not its last."""
    process = subprocess.Popen(
        [sys.executable, "-m", "experiments", "auto_tune", *ARGV, f"--run_dir={run_dir}"],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    try:
        while state_of(run_dir / "attempt01" / "state.json").get("completed_epochs", 0) < 1:
            assert process.poll() is None, f"auto_tune ended early:\n{process.stderr.read()}"
            assert time.monotonic() < deadline, "attempt 1 committed no epoch in time"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert process.returncode == -signal.SIGKILL


def test_auto_tune_restarts_resumes_after_sigkill_and_exports(
        parse, tmp_path, capsys, tensorboard_tags):
    run_dir = tmp_path / "run"
    start_and_kill_in_attempt1(run_dir)
    killed = state_of(run_dir / "search.json")
    assert [r["blocks"] for r in killed["attempts"]] == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert not (run_dir / "results.json").exists()
    # attempt 1 has a checkpoint: the restarted attempt 0 keeps none (its numbers are in
    # search.json)
    assert killed["attempts"][0]["summary"] is not None
    assert not list((run_dir / "attempt00").glob("checkpoints/*"))

    auto_tune.main(parse(*ARGV, f"--run_dir={run_dir}"))  # resume in this process
    out = capsys.readouterr().out
    assert f"resuming {run_dir}" in out and "[attempt 1 vgg-0-1-1-1] resuming" in out
    assert "[attempt 0" not in out  # the finished restart is not repeated
    assert "epoch 4/4" in out and "1 restarts, 5 epochs in all" in out

    results = state_of(run_dir / "results.json")
    assert results["start_blocks"] == [1, 1, 1, 1] and results["final_blocks"] == [0, 1, 1, 1]
    assert results["num_restarts"] == 1 and results["total_epochs"] == 1 + 4
    assert results["final_parameters"] < results["start_parameters"]
    assert results["start_latency_ms"] > 0 and results["final_latency_ms"] > 0
    assert 0.0 <= results["test_accuracy"] <= 1.0
    assert state_of(run_dir / "search.json")["attempts"] == results["attempts"]
    with open(run_dir / "attempt01" / "metrics.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2, 3, 4]  # 0: init
    with open(run_dir / "restarts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["restart"], r["attempt"], r["epoch"], r["first_conflicting_block"],
             r["blocks_before"], r["blocks_after"]) for r in rows] == \
        [("1", "0", "1", "stage1_block1", "1 1 1 1", "0 1 1 1")]
    assert {"epoch_restart_conflict_epoch", "epoch_restart_blocks_stage1"} <= \
        tensorboard_tags(run_dir / "tensorboard")

    assert (run_dir / "export" / "saved_model.pb").exists()
    assert (run_dir / "search.png").read_bytes().startswith(b"\x89PNG")
    final = keras.models.load_model(run_dir / "final.keras")
    assert final.count_params() == results["final_parameters"]
    assert not any(layer.name.startswith("stage1") for layer in final.layers)

    auto_tune.main(parse(*ARGV, f"--run_dir={run_dir}"))  # finished: prints, trains nothing
    out = capsys.readouterr().out
    assert "already finished" in out and "[attempt " not in out and "restart 1: attempt 0" in out


@pytest.mark.parametrize("argv, message", [
    (["--model=fnn", "--depth=3"], "--model must be one of"),
    (["--model=vgg", "--depth=10", "--seeds=2"], "--seeds=2"),
])
def test_bad_flags_say_what_to_do(parse, tmp_path, argv, message):
    with pytest.raises(app.UsageError, match=message):
        auto_tune.main(parse(*argv, f"--run_dir={tmp_path / 'run'}"))
    assert not (tmp_path / "run").exists()


def test_an_unknown_rule_is_rejected_when_parsing(parse):
    with pytest.raises(flags.IllegalFlagValueError, match="prune_rule"):
        parse("--prune_rule=papers")


def test_the_dec_2020_version_restarts_at_initialization_on_augmented_batches(
        parse, tmp_path, capsys):
    # As in tests/test_autotune.py: at lr 1e-3 the untrained 2,2,2,2 network
    # (seed 3) conflicts from stage3_block2 on, on its first augmented batch.
    run_dir = tmp_path / "run"
    auto_tune.main(parse(
        "--dataset=digits", "--model=vgg", "--blocks=2,2,2,2", "--epochs=1", "--seed=3",
        "--prune_rule=all_non_conflicting", "--measure_sample_source=augmented", "--max_restarts=1",
        "--measure_samples=64", "--latency_repeats=2", "--noexport", f"--run_dir={run_dir}"))
    assert "restart 1: attempt 0 conflicts after epoch 0" in capsys.readouterr().out
    with open(run_dir / "restarts.csv", newline="") as f:
        assert [(r["epoch"], r["blocks_before"], r["blocks_after"]) for r in csv.DictReader(f)] \
            == [("0", "2 2 2 2", "2 2 1 0")]
    for trial, epochs in (("attempt00", [0]), ("attempt01", [0, 1])):  # attempt 0 never trained
        with open(run_dir / trial / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(row["epoch"]) for row in rows] == epochs
    assert float(rows[0]["bundle_entropy"]) >= 0.0  # attempt 1 measured at initialization
    results = state_of(run_dir / "results.json")
    assert results["total_epochs"] == 1 and results["final_blocks"] == [2, 2, 1, 0]


def test_a_restart_measures_every_layer_once_and_its_conflicts_csv_is_that_report(
        parse, tmp_path, monkeypatch, restarting_search):
    # The check measures every layer to decide the restart; attempt 0's conflicts.csv is
    # that report, not a second measurement (tests/test_experiments_reliability.py checks
    # that a rerun measuring afresh writes the same file).
    from cb_keras.autotune import check as check_code
    from experiments.trials import trial as trial_code
    every_layer = []
    for module in (check_code, trial_code):
        def counting(*args, _measure=module.measure, _where=module.__name__, **kwargs):
            report = _measure(*args, **kwargs)
            if kwargs.get("layers") == "auto":
                every_layer.append((_where, report))
            return report
        monkeypatch.setattr(module, "measure", counting)
    run_dir = tmp_path / "run"
    auto_tune.main(parse(*restarting_search, f"--run_dir={run_dir}"))
    # attempt 0's restart, then attempt 1's conflicts.csv at its end
    assert [where for where, _ in every_layer] == [check_code.__name__, trial_code.__name__]
    every_layer[0][1].save_csv(tmp_path / "check.csv")
    assert (run_dir / "attempt00" / "conflicts.csv").read_text() == \
        (tmp_path / "check.csv").read_text()
