"""--accounting=reference: the reference's epochs, test accuracy and entropy integral.

The reference (peerdavid/conflicting-bundles, commit 1a4c762) saved checkpoint
e and then trained epoch e, except the last: ``--epochs=E`` trained E - 1
epochs, and checkpoint 0 held the untrained network (train.py). evaluate.py
measured a^L at every checkpoint, reported ``sum(H_e) / E`` over e = 0 .. E-1,
and pooled the test accuracy of the checkpoints with ``e > E - 5`` over the
test batches, the last partial batch dropped. docs/reproduction.md.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib

import numpy as np
import pytest
from absl import app

from cb_keras.paper import data, evaluation
from cb_keras.paper.spec import NetworkSpec
from experiments import auto_tune, evaluate, train
from experiments.runtime import rundir
from experiments.trials import recipe, trial
from experiments.runtime.config import TrainConfig


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_accountings_train_and_average_as_documented():
    cb, ref = evaluation.ACCOUNTINGS["cb_keras"], evaluation.ACCOUNTINGS["reference"]
    assert (cb.trained_epochs(120), cb.last_epochs, cb.drop_test_remainder) == (120, 5, False)
    assert (ref.trained_epochs(120), ref.last_epochs, ref.drop_test_remainder) == (119, 4, True)
    # The reference's "epoch > epochs - 5" over checkpoints 0..119: 116..119.
    assert [e for e in range(120) if e > 120 - 5] == [
        e for e in range(1, 120) if evaluation.in_last_epochs(e, 119, ref.last_epochs)]
    assert cb.trained_epochs(3) == 3
    with pytest.raises(ValueError, match="at least 5 epochs"):
        ref.trained_epochs(4)  # the reference would average the untrained network too
    with pytest.raises(ValueError, match="accounting must be one of"):
        evaluation.accounting("paper")


def test_the_reference_drops_the_last_partial_test_batch():
    _, whole, info = data.load("digits", batch_size=64)
    _, dropped, _ = data.load("digits", batch_size=64, drop_test_remainder=True)
    assert info.test_size == 360
    assert sum(int(y.shape[0]) for _, y in whole) == 360
    assert [int(y.shape[0]) for _, y in dropped] == [64] * 5  # 320: the last 40 dropped


@pytest.mark.parametrize("argv, message", [
    (["--epochs=4"], "at least 5 epochs"),
    (["--epochs=6", "--measure_every=2"], "drop --measure_every=2"),
])
def test_the_reference_accounting_refuses_what_it_cannot_reproduce(parse, tmp_path, argv,
                                                                  message):
    with pytest.raises(app.UsageError, match=message):
        train.main(parse(train, "--accounting=reference", "--model=fnn", "--depth=2",
                         f"--run_dir={tmp_path / 'run'}", *argv))
    assert not (tmp_path / "run").exists()


def test_a_tiny_training_with_the_reference_schedule(parse, tmp_path):
    run_dir = tmp_path / "run"
    epochs = 6  # trains 5; averages checkpoints 2..5 (e > 6 - 5)
    train.main(parse(
        train, "--accounting=reference", f"--epochs={epochs}", "--dataset=digits",
        "--model=fnn", "--depth=8", "--width=3", "--measure_samples=128",
        "--keep_checkpoints=4", "--progress=none", "--export=false", f"--run_dir={run_dir}"))

    rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4, 5]  # epochs - 1 trained
    initial = rows[0]
    assert initial["loss"] == "" and initial["bundle_entropy"] != ""  # measured untrained
    entropies = [float(r["bundle_entropy"]) for r in rows]
    assert max(entropies) > 0  # a deep, narrow network: the integral is not trivially 0

    (result,) = json.loads((run_dir / "results.json").read_text())["trials"]
    assert result["epochs"] == epochs - 1
    # evaluate.py: sum over checkpoints 0..E-1 of H_e / E.
    assert result["bundle_entropy_integral"] == pytest.approx(sum(h / epochs for h in entropies))

    tested = {int(r["epoch"]): float(r["test_accuracy"]) for r in rows if r["test_accuracy"]}
    assert [e for e in tested if e > epochs - 5] == [2, 3, 4, 5]
    assert result["test_accuracy"] == pytest.approx(np.mean([tested[e] for e in (2, 3, 4, 5)]))

    # Independently: the kept checkpoints, on the first 320 of the 360 test images.
    cfg = TrainConfig.from_flags(json.loads((run_dir / "flags.json").read_text()))
    _, test, info = data.load("digits", batch_size=64)
    x = np.concatenate([x for x, _ in test])[:320]
    y = np.concatenate([y for _, y in test])[:320]
    model = NetworkSpec("fnn", depth=8, width=3).build(info.input_shape,
                               info.num_classes)
    recipe.compile_model(model, cfg)
    correct = 0
    checkpoints = rundir.RunDir(run_dir).checkpoints()
    assert sorted(checkpoints) == [2, 3, 4, 5]
    for epoch, path in checkpoints.items():
        trial.restore(model, path)
        hits = int(np.sum(np.argmax(model.predict(x, verbose=0), axis=1) == y))
        assert tested[epoch] == pytest.approx(hits / 320, abs=1e-6)
        correct += hits
    assert result["test_accuracy"] == pytest.approx(correct / (4 * 320), abs=1e-6)  # pooled

    evaluate.main(parse(evaluate, f"--run_dir={run_dir}"))  # evaluate recomputes it
    (evaluated,) = json.loads((run_dir / "evaluation.json").read_text())["trials"]
    assert evaluated["epochs"] == [2, 3, 4, 5]
    assert evaluated["test_accuracy"] == pytest.approx(result["test_accuracy"], abs=1e-6)


def test_a_config_trains_the_epochs_asked_for_in_its_accounting():
    cfg = TrainConfig.from_flags(dict(
        dataset="digits", data_dir=None, augment=False, epochs=120, batch_size=64,
        learning_rate=1e-3, optimizer="paper", seed=0, seeds=1, test_every=1, measure_every=1,
        measure_layers="last", measure_samples=64, keep_checkpoints=2, export=False,
        progress="none", accounting="reference"))
    assert cfg.trained_epochs == 119
    assert cfg.with_trained_epochs(30).trained_epochs == 30  # an auto_tune run of 30 epochs
    assert dataclasses.replace(cfg, accounting="cb_keras").trained_epochs == 120


def test_auto_tune_counts_every_attempt_in_the_reference_accounting(parse, tmp_path):
    # lr 1e-7 makes a^L one bundle after epoch 1: one restart, then the last attempt.
    run_dir = tmp_path / "search"
    auto_tune.main(parse(
        auto_tune, "--accounting=reference", "--epochs=6", "--dataset=digits", "--model=vgg",
        "--blocks=1,1,0,0", "--check_window=1", "--max_restarts=1", "--learning_rate=1e-7",
        "--measure_samples=64", "--latency_repeats=2", "--noaugment", "--progress=none",
        "--noexport", f"--run_dir={run_dir}"))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["accounting"] == "reference" and results["num_restarts"] == 1
    assert results["total_epochs"] == 1 + 5  # the restarted attempt's 1, then 6 - 1
    final = [int(r["epoch"]) for r in read_csv(run_dir / "attempt01" / "metrics.csv")]
    assert final == [0, 1, 2, 3, 4, 5]
    rows = read_csv(run_dir / "attempt01" / "metrics.csv")
    assert results["test_accuracy"] == pytest.approx(
        np.mean([float(r["test_accuracy"]) for r in rows[2:]]))  # epochs 2..5


def test_auto_tune_final_epochs_follow_the_accounting(parse):
    vgg = ("--model=vgg", "--blocks=1,1,0,0", "--accounting=reference", "--epochs=30")
    parse(auto_tune, *vgg, "--final_epochs=10")
    search = auto_tune.read_flags().search_config
    assert (search.epochs, search.final_epochs) == (29, 9)
    parse(auto_tune, *vgg, "--final_epochs=4")
    with pytest.raises(app.UsageError, match="--final_epochs=4: .*at least 5 epochs"):
        auto_tune.read_flags()
