"""Reliability, round 3: the smaller cases, each one message (or a fix) instead of a traceback.

In process; ``python -m experiments`` prints a `CommandError` or
`app.UsageError` as one line (test_experiments_reliability.py).
"""

from __future__ import annotations

import pathlib
import subprocess
import warnings

import keras
import numpy as np
import pytest
from absl import app

import cb_keras
from cb_keras.autotune import trainer
from cb_keras.paper import models
from experiments import compare, evaluate, train
from experiments.runtime import rundir, strategy
from experiments.runtime.config import StrategyConfig
from experiments.runtime.console import CommandError
from experiments.trials.trial import restore

TINY = ["--dataset=digits", "--model=fnn", "--depth=2", "--width=8", "--optimizer=adam",
        "--measure_samples=64", "--noexport", "--progress=none", "--epochs=1"]


@pytest.fixture
def read_only(tmp_path):
    """``read_only(folder)``: a read-only view of `folder` (a bind mount; needs root)."""
    mounts = []

    def view(folder: pathlib.Path) -> pathlib.Path:
        target = tmp_path / f"read_only_{len(mounts)}"
        target.mkdir()
        for command in (["mount", "--bind", str(folder), str(target)],
                        ["mount", "-o", "remount,ro,bind", str(target)]):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                pytest.skip(f"a read-only view needs `mount --bind` (root): "
                            f"{done.stderr.strip()}")
            if command[1] == "--bind":
                mounts.append(target)
        return target
    yield view
    for target in reversed(mounts):
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.parametrize("value, message", [
    ("{bad", "Expecting property name"), ("[1, 2]", "not a JSON object")])
def test_a_tf_config_that_is_not_a_json_object_is_one_message(monkeypatch, value, message):
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(CommandError, match=f"TF_CONFIG is set but is not a JSON object "
                                           f"\\(.*{message}"):
        strategy.make(StrategyConfig("none"))


def test_devices_the_machine_lacks_are_refused():
    with pytest.raises(app.UsageError, match="this machine has no /gpu:99; its devices are "):
        strategy.make(StrategyConfig("mirrored", ("/cpu:0", "/gpu:99")))


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "a/b", "..", "."])
def test_a_name_that_escapes_the_runs_root_is_refused(parse, tmp_path, name):
    with pytest.raises(app.UsageError, match=f"--name={name} is not a folder name under"):
        train.main(parse(train, *TINY, f"--runs_root={tmp_path / 'runs'}", f"--name={name}"))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setup, message", [
    ("parent-is-a-file", "cannot make or lock the run directory .*Not a directory"),
    ("dangling-link", "cannot make or lock the run directory .*File exists"),
    ("lock-is-a-folder", r"\.lock is a folder, not the run's lock file"),
])
def test_a_run_directory_that_cannot_be_made_or_locked_is_one_message(
        parse, tmp_path, setup, message):
    if setup == "parent-is-a-file":
        (tmp_path / "parent").write_text("a file")
        run_dir = tmp_path / "parent" / "run"
    elif setup == "dangling-link":
        (tmp_path / "parent").symlink_to(tmp_path / "nowhere")
        run_dir = tmp_path / "parent" / "run"
    else:
        run_dir = tmp_path / "run"
        (run_dir / ".lock").mkdir(parents=True)
    with pytest.raises(rundir.RunDirError, match=message):
        train.main(parse(train, *TINY, f"--run_dir={run_dir}"))


def test_an_unfinished_run_on_read_only_storage_is_one_message(parse, tmp_path, read_only):
    (tmp_path / "runs" / "run").mkdir(parents=True)
    view = read_only(tmp_path / "runs")
    with pytest.raises(rundir.RunDirError, match="is on read-only storage, and an unfinished "
                                                 "run must write"):
        train.main(parse(train, *TINY, f"--run_dir={view / 'run'}"))
    with pytest.raises(rundir.RunDirError, match="is on read-only storage"):
        train.main(parse(train, *TINY, f"--run_dir={view / 'new'}"))


def test_evaluate_into_a_file_is_one_message(parse, tmp_path):
    run_dir = tmp_path / "run"
    train.main(parse(train, *TINY, f"--run_dir={run_dir}"))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(rundir.RunDirError, match="--output_dir=.*file is a file; pass a folder"):
        evaluate.main(parse(evaluate, f"--run_dir={run_dir}",
                            f"--output_dir={tmp_path / 'file'}"))


def test_compare_partial_of_a_read_only_run_prints_the_table_and_writes_nothing(
        parse, tmp_path, read_only, capsys):
    argv = ["--dataset=digits", "--model=vgg", "--blocks=1,0,0,0", "--epochs=1", "--seeds=1",
            "--contestants=fixed", "--fixed_depths=4", "--measure_samples=64", "--noexport",
            "--latency_repeats=1", "--progress=none"]
    compare.main(parse(compare, *argv, f"--run_dir={tmp_path / 'run'}"))
    view = read_only(tmp_path / "run")
    capsys.readouterr()
    compare.main(parse(compare, *argv, f"--run_dir={view}", "--partial"))
    out = capsys.readouterr().out
    assert out.startswith(f"1 of 1 cells finished ({view} is read-only: no *_partial.* files "
                          "written)") and "vgg-d4" in out
    assert not list(view.glob("*_partial*"))


def test_conflicting_bundles_refuses_a_log_dir_that_is_a_file(tmp_path, sample):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ValueError, match="log_dir=.*file' is a file, not a folder"):
        cb_keras.ConflictingBundles(*sample, batch_size=64, log_dir=tmp_path / "file")


def test_resuming_removes_the_temporary_files_of_a_killed_writer(parse, tmp_path):
    run_dir = tmp_path / "run"
    leftovers = [run_dir / ".state.json.k2j4h5.tmp", run_dir / "checkpoints" /
                 ".tmp-epoch_0001.weights.h5", run_dir / ".tmp-export" / "saved_model.pb"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"torn")
    train.main(parse(train, *TINY, f"--run_dir={run_dir}"))
    assert not [p for p in run_dir.rglob("*") if "tmp" in p.name]
    assert (run_dir / "results.json").exists()


def test_a_checkpoint_that_loads_only_in_part_is_refused_without_keras_warnings(tmp_path):
    def network(optimizer):
        model = models.fnn(2, 8, (8, 8, 1), 10)
        trainer.compile_model(model, optimizer)
        return model
    saved = network(keras.optimizers.Adam())
    saved.fit(np.zeros((4, 8, 8, 1)), np.zeros(4, int), verbose=0)
    path = rundir.RunDir(tmp_path).save_checkpoint(saved, 1)
    other = network(keras.optimizers.SGD())  # fewer optimizer variables: Keras skips them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(rundir.RunDirError, match="does not load \\(Skipping variable "
                                                     "loading for optimizer"):
            restore(other, tmp_path / path)
    assert not [w for w in caught if "Skipping" in str(w.message)]


def test_finite_float64_activations_beyond_float32_say_overflow_not_divergence():
    activations = np.array([[1e39, 0.0], [0.0, 1.0]], np.float64)
    kwargs = dict(num_classes=2, weight_amplitude=0.5, learning_rate=1.0, batch_size=1)
    with pytest.raises(ValueError, match=r"finite but overflow float32 \(max \|a\| = 1e\+39"):
        cb_keras.bundle_metrics(activations, [0, 1], **kwargs)
    with pytest.raises(ValueError, match="NaN or inf: training diverged"):
        cb_keras.bundle_metrics(np.array([[np.inf, 0.0], [0.0, 1.0]]), [0, 1], **kwargs)


def test_timing_many_networks_logs_no_retracing_warning():
    import logging

    from experiments.runtime import serving

    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        for width in range(2, 9):
            model = models.fnn(1, width, (8, 8, 1), 10)
            assert serving.latencies_ms([model], np.zeros((4, 8, 8, 1), np.float32), 1)[0] > 0
    finally:
        logger.removeHandler(handler)
    assert not [m for m in messages if "retracing" in m]
