"""The experiment mains in-process: run directories, resume rules, strategies, flag errors.

Each test parses flags with absl exactly as ``python -m experiments COMMAND``
does and calls the command's ``main``; tiny settings on ``digits``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags

from cb_keras.paper import data
from cb_keras.paper.spec import NetworkSpec
from experiments import evaluate, fnn_map, train
from experiments.runtime import rundir, strategy
from experiments.options import model as model_flags
from experiments.options import strategy as strategy_flags
from experiments.options import training as training_flags
from experiments.trials.recipe import compile_model, trial_data
from experiments.trials.trial import entropy_integral, train_trial

FLAGS = flags.FLAGS
FLAGFILES = pathlib.Path(__file__).resolve().parents[1] / "flags"
TINY = ["--dataset=digits", "--epochs=3", "--measure_samples=128", "--progress=line"]


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


TRIAL_FILES = {"state.json", "metrics.csv", "conflicts.csv", "conflicts.png",
               "tensorboard", "checkpoints"}


def test_train_writes_the_whole_run_directory_and_resumes_nothing_when_finished(
        command, tmp_path, capsys, tensorboard_tags):
    run_dir = tmp_path / "run"
    argv = [*TINY, "--model=fnn", "--depth=2", "--width=16", "--measure_layers=all",
            "--keep_checkpoints=2", f"--run_dir={run_dir}"]
    command(train, *argv)
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and "a^L bundles" in out  # one line per epoch
    assert "test_acc(last5)" in out  # the summary table

    assert {p.name for p in run_dir.iterdir()} == TRIAL_FILES | {
        "flags.json", "environment.json", "results.json", "export", ".lock"}
    saved = json.loads((run_dir / "flags.json").read_text())
    assert saved["depth"] == 2 and saved["dataset"] == "digits" and saved["epochs"] == 3
    assert {"strategy", "optimizer", "learning_rate", "batch_size", "seed"} <= set(saved)

    initial, *rows = read_csv(run_dir / "metrics.csv")
    assert [int(r["epoch"]) for r in [initial, *rows]] == [0, 1, 2, 3]
    for column in ("loss", "accuracy", "test_loss", "test_accuracy", "bundle_entropy",
                   "num_bundles", "max_accuracy", "seconds"):
        assert all(math.isfinite(float(r[column])) for r in rows), column
    assert 1 <= float(initial["num_bundles"]) <= 512 and initial["loss"] == ""  # untrained

    layers = read_csv(run_dir / "conflicts.csv")
    assert [r["layer"] for r in layers] == ["dense1_tap", "dense2_tap"]
    assert (run_dir / "conflicts.png").read_bytes()[:4] == b"\x89PNG"

    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and results["command"] == "train"
    assert results["spec"] == {"model": "fnn", "depth": 2, "width": 16}
    (trial,) = results["trials"]
    assert trial["epochs"] == 3 and trial["layers"] == 2
    assert trial["test_accuracy"] == pytest.approx(
        np.mean([float(r["test_accuracy"]) for r in rows]))  # 3 epochs: all in the last 5
    assert trial["num_bundles"] == int(layers[-1]["num_bundles"])
    assert trial["bundle_entropy_integral"] == pytest.approx(  # epochs 0..3
        np.mean([float(r["bundle_entropy"]) for r in [initial, *rows]]))
    assert results["test_accuracy_mean"] == trial["test_accuracy"]
    assert results["test_accuracy_std"] == 0.0

    state = json.loads((run_dir / "state.json").read_text())
    assert state["finished"] and state["completed_epochs"] == 3
    assert len(state["data_seeds"]) == 3 and len(set(state["data_seeds"])) == 3
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "epoch_0002.weights.h5", "epoch_0003.weights.h5"]
    tags = tensorboard_tags(run_dir / "tensorboard")
    assert {"epoch_loss", "epoch_test_accuracy", "epoch_bundle_entropy"} <= tags
    assert (run_dir / "tensorboard" / "conflicts_epoch0002.json").exists()  # all layers

    x, _ = data.measurement_sample("digits", 4)
    exported = tf.saved_model.load(str(run_dir / "export"))
    assert exported.serve(tf.constant(x)).shape == (4, 10)

    before = (run_dir / "results.json").stat().st_mtime_ns
    command(train, *argv)
    out = capsys.readouterr().out
    assert "already finished" in out and "epoch 1/3" not in out
    assert (run_dir / "results.json").stat().st_mtime_ns == before

    with pytest.raises(rundir.RunDirError, match=r"--epochs=3 \(now 4\)"):
        command(train, *argv, "--epochs=4")

    command(evaluate, f"--run_dir={run_dir}")
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    (evaluated,) = evaluation["trials"]
    assert evaluated["epochs"] == [2, 3]  # the checkpoints kept
    assert evaluated["test_accuracy_by_epoch"]["3"] == pytest.approx(
        float(rows[-1]["test_accuracy"]), abs=1e-6)
    assert evaluated["layers"] == 2 and evaluation["finished"]


def test_fnn_map_trains_the_grid_and_outlines_the_conflicting_networks(
        command, tmp_path, capsys):
    run_dir = tmp_path / "map"
    command(fnn_map, "--dataset=digits", "--epochs=4", "--optimizer=adam", "--noaugment",
        "--depths=1,12", "--widths=2,32", "--noexport", "--progress=none",
        f"--run_dir={run_dir}")
    assert {p.name for p in run_dir.iterdir()} == {
        "flags.json", "environment.json", "results.json", "fnn_map.csv", "fnn_map.png", "cells",
        ".lock"}
    cells = {p.name for p in (run_dir / "cells").iterdir()}
    assert cells == {"d1_w2", "d1_w32", "d12_w2", "d12_w32"}
    for cell in cells:
        assert {p.name for p in (run_dir / "cells" / cell).iterdir()} == TRIAL_FILES
    rows = {(int(r["depth"]), int(r["width"])): r for r in
            read_csv(run_dir / "fnn_map.csv")}
    assert set(rows) == {(1, 2), (1, 32), (12, 2), (12, 32)}
    # 12 ReLU layers of 2 units collapse the samples; 1 layer of 32 keeps them apart.
    assert rows[12, 2]["conflicting"] == "True" and float(rows[12, 2]["bundle_entropy_mean"]) > 0
    assert rows[1, 32]["conflicting"] == "False"
    assert float(rows[1, 32]["test_accuracy_mean"]) > float(rows[12, 2]["test_accuracy_mean"])
    assert (run_dir / "fnn_map.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["depths"] == [1, 12] and results["widths"] == [2, 32]
    assert results["conflicting_cells"] == sum(r["conflicting"] == "True" for r in rows.values())
    assert "conflicting" in capsys.readouterr().out


def test_mirrored_strategy_trains_several_seeds_on_two_devices_loading_the_data_once(
        command, parse, tmp_path, cpu_devices, monkeypatch):
    run_dir = tmp_path / "mirrored"
    argv = [*TINY, "--epochs=2", "--model=fnn", "--depth=2", "--width=8", "--seeds=2",
            "--seed=5", "--strategy=mirrored", f"--devices={','.join(cpu_devices)}",
            "--noexport", f"--run_dir={run_dir}"]
    parse(train, *argv)
    assert strategy.make(strategy_flags.strategy_config()).num_replicas_in_sync == 2
    calls = []
    for name in ("load", "measurement_sample"):
        monkeypatch.setattr(data, name, lambda *args, _f=getattr(data, name), _name=name,
                            **kwargs: calls.append(_name) or _f(*args, **kwargs))
    command(train, *argv)
    # The test split and the sample once per command; a pipeline per seed and epoch.
    assert calls.count("load") == 1 + 2 * 2 and calls.count("measurement_sample") == 1
    results = json.loads((run_dir / "results.json").read_text())
    assert [t["seed"] for t in results["trials"]] == [5, 6]
    for seed in (5, 6):
        assert {p.name for p in (run_dir / f"seed{seed}").iterdir()} == TRIAL_FILES
        assert len(read_csv(run_dir / f"seed{seed}" / "metrics.csv")) == 1 + 2  # epochs 0..2
    values = [t["test_accuracy"] for t in results["trials"]]
    assert results["test_accuracy_mean"] == pytest.approx(np.mean(values))
    assert results["test_accuracy_std"] == pytest.approx(np.std(values))


@pytest.mark.parametrize("module, argv, message", [
    (train, ["--model=vgg", "--blocks=1,2"], "four integers"),
    (train, ["--depth=2", "--blocks=a,b,c,d"], "comma-separated integers"),
    (train, ["--depth=2", "--dataset=imagenet"], "digits"),
    (train, ["--depth=2", "--learning_rate=0"], "must be > 0"),
    (train, ["--depth=2", "--devices=/cpu:0"], "only used with --strategy=mirrored"),
    (train, ["--depth=2", "--optimizer=adamw"], "paper"),
    (fnn_map, ["--depths=0,2"], "each >= 1"),
    # the names before 0.2 (CHANGELOG.md) are unknown flags, not aliases
    (train, ["--depth=2", "--runs=2"], "Unknown command line flag 'runs'"),
    (train, ["--depth=2", "--measure_sample=augmented"],
     "Unknown command line flag 'measure_sample'"),
])
def test_bad_flags_are_rejected_with_what_to_do(parse, module, argv, message):
    with pytest.raises(flags.Error, match=message):
        parse(module, *argv)


def test_errors_of_main_say_what_to_do(command, tmp_path):
    for argv, message in ((["--model=vgg"], "needs either --depth"),
                          (["--model=fnn"], r"needs --depth \(number of hidden layers\), e.g."),
                          (["--model=fnn", "--depth=2", "--blocks=1,1,1,1"],
                           "--blocks is for --model=vgg or resnet"),
                          (["--model=resnet", "--depth=10", "--blocks=1,1,1,1"], "not both"),
                          (["--model=vgg", "--depth=7"], r"known depths: \[4, 10")):
        with pytest.raises(app.UsageError, match=message):
            command(train, *argv, f"--run_dir={tmp_path}/r")
    with pytest.raises(app.UsageError, match="needs the run to evaluate"):
        command(evaluate)
    with pytest.raises(app.UsageError, match="holds no run"):
        command(evaluate, f"--run_dir={tmp_path}")
    with pytest.raises(app.UsageError, match="no positional arguments"):
        command(train, "--depth=2", "extra")


@pytest.mark.parametrize(
    "path", sorted(FLAGFILES.glob("train_*.cfg")) + sorted(FLAGFILES.glob("fnn_map_*.cfg")),
    ids=lambda path: path.name)
def test_flagfiles_hold_valid_configurations_with_the_papers_hyperparameters(parse, path):
    module = fnn_map if path.name.startswith("fnn_map") else train
    parse(module, f"--flagfile={path}")
    cfg = training_flags.training_config()
    assert (cfg.batch_size, cfg.learning_rate, cfg.measure_samples) == (64, 1e-3, 512)
    if module is train:
        assert model_flags.model_spec().kind in ("fnn", "vgg", "resnet")
    if cfg.dataset != "digits":
        assert cfg.optimizer == "paper" and cfg.augment


def test_a_trial_directory_refuses_another_network(parse, tmp_path):
    parse(train, "--depth=2")
    trial = rundir.RunDir(tmp_path)
    trial.write_json(rundir.STATE_FILE, {"spec": {"model": "fnn", "depth": 3, "width": 8},
                                         "seed": 0, "completed_epochs": 1, "history": [],
                                         "data_seeds": [1, 2, 3]})
    cfg = training_flags.training_config()
    with pytest.raises(rundir.RunDirError, match="use another directory"):
        train_trial(trial, NetworkSpec("fnn", depth=2, width=8), cfg, trial_data(cfg),
                    seed=0, strategy=tf.distribute.get_strategy())


# -- the run directory module ------------------------------------------------

def test_atomic_writes_leave_no_temporary_files_and_json_has_no_nan(tmp_path):
    run_dir = rundir.RunDir(tmp_path)
    run_dir.write_json("a.json", {"x": float("nan"), "y": np.float32(1.5), "z": [np.int64(2)]})
    run_dir.write_csv("b.csv", [{"p": 1, "q": None}], ["p", "q"])
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": None, "y": 1.5, "z": [2]}
    assert (tmp_path / "b.csv").read_text() == "p,q\n1,\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv"]


def test_a_reader_never_writes(tmp_path):
    reader = rundir.RunDir(tmp_path / "r", writer=False)
    reader.write_json("a.json", {})
    reader.start({"x": 1})
    assert not (tmp_path / "r").exists()


def test_start_records_flags_and_refuses_changed_ones_but_not_operational(tmp_path):
    run_dir = rundir.RunDir(tmp_path)
    assert run_dir.start({"epochs": 3, "strategy": "none", "width": 8}) is False
    assert run_dir.start({"epochs": 3, "strategy": "mirrored", "width": 8}) is True
    assert json.loads((tmp_path / "flags.json").read_text())["strategy"] == "mirrored"
    (tmp_path / "state.json").write_text('{"completed_epochs": 1}')  # it trained: kept
    with pytest.raises(rundir.RunDirError, match=r"--epochs=3 \(now 5\), --width=8 \(now 9\)"):
        run_dir.start({"epochs": 5, "strategy": "none", "width": 9})


def test_default_name_depends_on_flags_that_matter_only():
    name = rundir.default_name("train", "fnn-d2-w8_digits", {"epochs": 3, "run_dir": "a"})
    assert name.startswith("train_fnn-d2-w8_digits_")
    assert name == rundir.default_name("train", "fnn-d2-w8_digits",
                                       {"epochs": 3, "run_dir": "b"})
    assert name != rundir.default_name("train", "fnn-d2-w8_digits",
                                       {"epochs": 4, "run_dir": "a"})


def test_checkpoints_are_listed_by_epoch_and_pruned(tmp_path):
    run_dir = rundir.RunDir(tmp_path)
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for epoch in (1, 2, 3, 10):
        (folder / f"epoch_{epoch:04d}.weights.h5").write_bytes(b"")
    (folder / ".tmp-epoch_0011.weights.h5").write_bytes(b"")  # a torn write: ignored
    assert list(run_dir.checkpoints()) == [1, 2, 3, 10]
    run_dir.prune_checkpoints(keep=2, protect=10)
    assert list(run_dir.checkpoints()) == [3, 10]
    assert os.path.exists(folder / ".tmp-epoch_0011.weights.h5")
    run_dir.prune_checkpoints(keep=0)  # a restarted auto_tune attempt keeps none
    assert run_dir.checkpoints() == {}


def test_entropy_integral_is_the_mean_over_the_scheduled_measurements_from_epoch_0():
    def history(*entropies):
        return [{"epoch": e, "bundle_entropy": h} for e, h in enumerate(entropies)]

    assert entropy_integral(history(0.4, 0.2, 0.0, 0.2), every=1) == \
        pytest.approx(0.2)
    # every 2: measured at epochs 0 and 2; the unmeasured epochs hold None
    assert entropy_integral(history(0.4, None, 0.1, None), every=2) == \
        pytest.approx(0.25)
    assert entropy_integral(history(None, 0.2, 0.2), every=1) is None  # no epoch 0
    assert entropy_integral(history(0.1, None, 0.2), every=1) is None  # diverged
    assert entropy_integral(history(0.1, 0.2), every=0) is None  # never measured
    assert entropy_integral([], every=1) is None


@pytest.mark.parametrize("optimizer", ["paper", "adam"])
def test_a_compiled_model_traces_its_train_step_once(optimizer):
    # Optimizer or metric variables that `fit` creates inside the first trace
    # of the train step make TensorFlow trace the whole step again.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    compile_model(model, SimpleNamespace(optimizer=optimizer, learning_rate=1e-3))
    traces, train_step = [], model.train_step

    def counted_train_step(batch):
        traces.append(batch)
        return train_step(batch)

    model.train_step = counted_train_step
    model.fit(np.zeros((8, 4), "float32"), np.zeros(8, "int32"), batch_size=4, epochs=2,
              verbose=0)
    assert len(traces) == 1
