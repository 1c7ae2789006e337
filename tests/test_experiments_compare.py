"""`python -m experiments compare` and its Keras Tuner contestant, on tiny settings.

The full comparison lives in flags/compare_digits.cfg; here every network
trains 1-2 epochs on digits, which tests the machinery: cells, budget,
the a^L check stopping tuner trials, aggregation, files and resuming.
"""

from __future__ import annotations

import csv
import json
import pathlib

import keras
import numpy as np
import pytest

from cb_keras.autotune import rules
from cb_keras.paper import models
from cb_keras.paper.spec import NetworkSpec
from experiments import compare
from experiments.contestants import optuna_search, tuner
from experiments.runtime import console, strategy
from experiments.runtime.config import StrategyConfig, TrainConfig
from experiments.runtime.rundir import RunDir
from experiments.trials.recipe import trial_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGV = ["--dataset=digits", "--model=vgg", "--blocks=1,1,0,0", "--epochs=2", "--seeds=1",
        "--fixed_depths=4", "--tuner_budget=3", "--measure_samples=64", "--test_every=1",
        "--check_window=2", "--noexport", "--latency_repeats=2", "--progress=none"]


def test_compare_trains_every_contestant_tabulates_and_resumes(parse, tmp_path, capsys):
    run_dir = tmp_path / "run"
    compare.main(parse(compare, *ARGV, f"--run_dir={run_dir}"))
    results = json.loads((run_dir / "results.json").read_text())
    cells = {c["contestant"]: c for c in results["cells"]}
    assert list(cells) == ["auto_tune", "vgg-d4", "keras_tuner", "keras_tuner_check"]
    assert [r["contestant"] for r in results["rows"]] == list(cells)
    for row in results["rows"]:  # one seed: the mean is the cell, the std 0
        cell = cells[row["contestant"]]
        assert row["test_accuracy_mean"] == pytest.approx(cell["test_accuracy"])
        assert row["test_accuracy_std"] == 0.0 and row["seeds"] == 1
        assert row["networks"] == ",".join(map(str, cell["blocks"]))
        assert row["latency_ms"] > 0
        assert 0.0 <= cell["test_accuracy"] <= 1.0
    fixed = cells["vgg-d4"]
    assert fixed["blocks"] == [1, 0, 0, 0] and fixed["epochs"] == 2 and fixed["layers"] == 4
    assert fixed["parameters"] == models.vgg(models.paper_blocks(4), (8, 8, 1), 10).count_params()
    for name in ("keras_tuner", "keras_tuner_check"):
        trials = json.loads((run_dir / name / "seed0" / "cell.json").read_text())["trials"]
        assert 3 <= sum(t["epochs"] for t in trials) == cells[name]["epochs"] < 3 + 2
        assert all(0 < sum(t["blocks"]) and all(b <= m for b, m in zip(t["blocks"], (1, 1, 0, 0)))
                   for t in trials)
        best = max(trials, key=lambda t: t["score"])
        assert cells[name]["test_accuracy"] == best["test_accuracy"]
    with open(run_dir / "cells.csv") as handle:
        assert [row["contestant"] for row in csv.DictReader(handle)] == list(cells)
    assert (run_dir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "keras_tuner_check" in table and "test_acc" in table

    compare.main(parse(compare, *ARGV, f"--run_dir={run_dir}"))  # finished: trains nothing
    assert "already finished" in capsys.readouterr().out

    # --partial tabulates the finished cells and trains nothing.
    compare.main(parse(compare, *ARGV, f"--run_dir={run_dir}", "--partial"))
    assert capsys.readouterr().out.startswith(
        f"4 of 4 cells finished (files *_partial.* in {run_dir})")
    with open(run_dir / "compare_partial.csv") as handle:
        partial = list(csv.DictReader(handle))
    assert [(r["contestant"], float(r["test_accuracy_mean"])) for r in partial] == [
        (r["contestant"], pytest.approx(r["test_accuracy_mean"])) for r in results["rows"]]
    assert (run_dir / "compare_partial.png").exists()
    with pytest.raises(console.CommandError, match="no compare run yet"):
        compare.main(parse(compare, *ARGV, f"--run_dir={tmp_path / 'none'}", "--partial"))

    # A run killed inside a cell: rerunning finishes that cell from its trial.
    (run_dir / "results.json").unlink()
    (run_dir / "vgg-d4" / "seed0" / "cell.json").unlink()
    compare.main(parse(compare, *ARGV, f"--run_dir={run_dir}"))
    again = json.loads((run_dir / "results.json").read_text())
    redone = {c["contestant"]: c for c in again["cells"]}["vgg-d4"]
    assert redone["resumed"] and redone["test_accuracy"] == fixed["test_accuracy"]
    assert "finished earlier" in capsys.readouterr().out


def test_the_a_l_check_stops_conflicting_tuner_trials_and_scores_them_zero(tmp_path):
    # At initialization a^L of vgg networks with many blocks in stage 2 is one
    # bundle on digits (6,6,0,0: a^L of stage2_block4 on is conflicting). The
    # oracle of seed 0 (Keras Tuner seed 1) draws 0,12 / 4,10 / 3,7 / 1,1 /
    # ...: the check at init stops the deep ones before their first epoch.
    training = TrainConfig(
        dataset="digits", data_dir=None, augment=False, epochs=1, batch_size=64,
        learning_rate=1e-3, optimizer="paper", seed=0, seeds=1, test_every=1,
        measure_every=1, measure_layers="last", measure_samples=64, keep_checkpoints=1,
        export=False, progress="none")
    search = tuner.Search(kind="vgg", max_blocks=(6, 12, 0, 0), budget=1, training=training,
                          check=True, rule="first_conflict", window=1, at_init=True)
    found = tuner.search(RunDir(tmp_path), search, trial_data(training),
                         strategy.make(StrategyConfig("none")))
    trials = found["trials"]
    stopped = [t for t in trials if t["stopped_by_check"]]
    trained = [t for t in trials if not t["stopped_by_check"]]
    assert stopped and trained, trials
    assert all(t["epochs"] == 0 and t["score"] == 0.0 for t in stopped)
    assert all(t["epochs"] == 1 and t["score"] == t["test_accuracy"] for t in trained)
    assert len(trained) == 1 and found["epochs"] == 1  # stopped trials cost no epoch
    assert found["stopped_trials"] == len(stopped)
    assert found["blocks"] == max(trained, key=lambda t: t["score"])["blocks"]
    # The stop is auto-tune's check: a stopped network's a^L conflicts at init.
    from cb_keras import measurement
    from cb_keras.paper import data
    x, y = data.measurement_sample("digits", 64)
    keras.utils.set_random_seed(0)
    model = models.vgg(stopped[0]["blocks"], (8, 8, 1), 10)
    last = measurement.measure(model, x, y, num_classes=10, learning_rate=1e-3, batch_size=64,
                               layers="last", samples=64).last
    assert last.bundle_entropy > 0


def test_aggregate_means_over_seeds_and_lists_the_networks():
    cells = [
        {"contestant": "a", "seed": 0, "blocks": [1, 0, 0, 0], "layers": 4, "parameters": 10,
         "test_accuracy": 0.8, "epochs": 30, "train_seconds": 5.0, "wall_seconds": 6.0},
        {"contestant": "a", "seed": 1, "blocks": [2, 0, 0, 0], "layers": 6, "parameters": 20,
         "test_accuracy": 0.6, "epochs": 40, "train_seconds": 7.0, "wall_seconds": 8.0},
        {"contestant": "a", "seed": 2, "blocks": [1, 0, 0, 0], "layers": 4, "parameters": 15,
         "test_accuracy": 0.7, "epochs": 35, "train_seconds": 6.0, "wall_seconds": 1.0,
         "resumed": True},  # its wall time counts only its last process
    ]
    row, = compare.aggregate(cells, {"1,0,0,0": 1.0, "2,0,0,0": 4.0})
    assert row["networks"] == "1,0,0,0 | 2,0,0,0" and row["layers"] == "4 | 6"
    assert row["test_accuracy_mean"] == pytest.approx(0.7)
    assert row["test_accuracy_std"] == pytest.approx(np.std([0.8, 0.6, 0.7]))
    assert (row["parameters"], row["latency_ms"], row["epochs"]) == (15.0, 2.0, 35.0)
    assert (row["wall_seconds"], row["seeds"]) == (7.0, 3)


def test_the_oracle_seed_is_never_zero_which_keras_tuner_reads_as_random():
    assert [tuner.oracle_seed(s) for s in (0, 1, 2)] == [1, 2, 3]


@pytest.mark.parametrize("module, require, extra", [
    ("keras_tuner", tuner.require, "tuner"), ("optuna", optuna_search.require, "optuna")])
def test_search_contestants_without_the_package_name_the_extra(monkeypatch, module, require,
                                                               extra):
    monkeypatch.setattr(console.importlib.util, "find_spec",
                        lambda name: None if name == module else np)
    with pytest.raises(console.CommandError, match=rf"cb_keras\[{extra}\]"):
        require()


def test_tuner_budget_below_the_epochs_is_refused(parse):
    from absl import app
    parse(compare, *ARGV, "--tuner_budget=1")
    with pytest.raises(app.UsageError, match="--tuner_budget=1 is below --epochs=2"):
        compare.read_flags()


def test_the_digits_flagfile_compares_the_main_job_with_three_seeds(parse):
    parse(compare, f"--flagfile={ROOT / 'flags' / 'compare_digits.cfg'}")
    cfg = compare.read_flags()
    assert cfg.seeds == [0, 1, 2] and cfg.tuner_budget == 60
    assert cfg.cells == ["auto_tune", "auto_tune_non_conflicting",
                         "auto_tune_all_non_conflicting", "vgg-d4", "vgg-d10", "vgg-d20",
                         "keras_tuner", "keras_tuner_check", "optuna_tpe_median",
                         "optuna_tpe_check"]
    search = cfg.search.search_config
    assert (search.start_blocks, search.epochs, search.rule, search.samples) == (
        (3, 6, 12, 3), 30, "first_conflict", 64)
    assert cfg.training.seeds == 3 and cfg.search.training.seeds == 3


NEW = ("auto_tune_non_conflicting", "auto_tune_all_non_conflicting", "optuna_tpe_median",
       "optuna_tpe_check")


def test_compare_runs_the_rule_versions_and_the_optuna_contestants(parse, tmp_path):
    pytest.importorskip("optuna")
    run_dir = tmp_path / "run"
    compare.main(parse(compare, *ARGV, f"--run_dir={run_dir}",
                       f"--contestants={','.join(NEW)}"))
    results = json.loads((run_dir / "results.json").read_text())
    cells = {c["contestant"]: c for c in results["cells"]}
    assert list(cells) == list(NEW)
    for rule in ("non_conflicting", "all_non_conflicting"):  # the version's own schedule
        config = json.loads((run_dir / f"auto_tune_{rule}" / "seed0" / "search.json").read_text()
                            )["config"]
        version = rules.VERSIONS[rule]
        assert (config["rule"], config["check_at_init"]) == (rule, version.check_at_init)
        assert config["check_window"] == version.check_window
    for name in ("optuna_tpe_median", "optuna_tpe_check"):
        trials = json.loads((run_dir / name / "seed0" / "cell.json").read_text())["trials"]
        assert 3 <= sum(t["epochs"] for t in trials) == cells[name]["epochs"] < 3 + 2
        done = [t for t in trials if t["score"] is not None]
        assert all(t["epochs"] == 2 for t in done)  # a pruned trial is never a result
        assert cells[name]["test_accuracy"] == max(t["score"] for t in done)
        assert (run_dir / name / "seed0" / "optuna.journal").exists()


class Killed(keras.callbacks.Callback):
    """Raises at the start of epoch 2, after epoch 1 was committed: a killed process."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("killed")


def test_an_optuna_trial_left_running_by_a_killed_process_is_retried_in_its_directory(
        tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    from experiments.contestants import optuna_search
    from experiments.trials import trial
    training = TrainConfig(
        dataset="digits", data_dir=None, augment=False, epochs=2, batch_size=64,
        learning_rate=1e-3, optimizer="paper", seed=0, seeds=1, test_every=1,
        measure_every=0, measure_layers="last", measure_samples=64, keep_checkpoints=1,
        export=False, progress="none")
    search = tuner.Search(kind="vgg", max_blocks=(1, 1, 0, 0), budget=2, training=training,
                          check=False, rule="first_conflict", window=1, at_init=False)
    dist = strategy.make(StrategyConfig("none"))
    # A process began trial 0 (blocks 1,0,0,0) and died after committing epoch 1.
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / optuna_search.JOURNAL)))
    study = optuna.create_study(study_name="compare", direction="maximize", storage=storage)
    study.enqueue_trial({"stage1": 1, "stage2": 0, "stage3": 0, "stage4": 0})
    left = study.ask({f"stage{s}": optuna.distributions.IntDistribution(0, most)
                      for s, most in enumerate(search.max_blocks, start=1)})
    left.set_user_attr(optuna_search.DIR_ATTR, "trial_0")
    trial_dir = RunDir(tmp_path).sub("trials").sub("trial_0")
    with pytest.raises(RuntimeError, match="killed"):
        trial.train_trial(trial_dir, NetworkSpec("vgg", [1, 0, 0, 0]), training,
                          trial_data(training), seed=0, strategy=dist, callbacks=[Killed()])

    found = optuna_search.search(RunDir(tmp_path), search, None, trial_data(training), dist)
    assert "resuming" in capsys.readouterr().out  # after epoch 1, in the same directory
    states = [t.state for t in optuna.load_study(study_name="compare", storage=storage).trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    (record,) = found["trials"]  # the failed trial is no result; its epoch is not redone
    assert (record["trial"], record["blocks"], record["epochs"]) == (1, [1, 0, 0, 0], 2)
    assert found["epochs"] == 2 and found["test_accuracy"] == record["score"]
