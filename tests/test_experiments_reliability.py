"""What the experiments guarantee when things go wrong: damaged files, two processes,
read-only runs, Ctrl-C, serving exports without cb_keras, a quiet console.

Tiny FNNs on digits; the subprocess tests start ``python -m experiments`` as a
user does.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import cb_keras
from cb_keras.paper import data, models
from cb_keras.paper.spec import NetworkSpec
from conftest import RESTARTING_SEARCH
from experiments import auto_tune, evaluate, train
from experiments.runtime import rundir, serving
from experiments.options import training as training_flags
from experiments.trials.recipe import trial_data
from experiments.trials import trial as trial_code
from experiments.trials.trial import train_trial

FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
TINY = ["--dataset=digits", "--model=fnn", "--depth=2", "--width=8", "--optimizer=adam",
        "--measure_samples=64", "--noexport"]


def experiments(*argv: str) -> subprocess.CompletedProcess:
    """``python -m experiments argv`` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", "experiments", *argv], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def snapshot(folder: pathlib.Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


class StopAfter(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the end of epoch `epoch` (1-based), before its commit."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


# -- item: a damaged newest checkpoint ---------------------------------------

def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(parse, tmp_path, capsys):
    parse(train, *TINY, "--epochs=4", "--progress=none")
    cfg, spec = training_flags.training_config(), NetworkSpec("fnn", depth=2, width=8)
    data = trial_data(cfg)
    trial = rundir.RunDir(tmp_path / "trial")
    with pytest.raises(KeyboardInterrupt):  # killed in epoch 4: epochs 1-3 committed
        train_trial(trial, spec, cfg, data, seed=0, strategy=tf.distribute.get_strategy(),
                    callbacks=[StopAfter(4)])
    assert list(trial.checkpoints()) == [2, 3]  # the newest plus one fallback (default)
    newest = trial.checkpoints()[3]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, e.g. by a full disk

    result = train_trial(trial, spec, cfg, data, seed=0,
                         strategy=tf.distribute.get_strategy())
    out = capsys.readouterr().out
    assert "epoch_0003.weights.h5 does not load" in out
    assert "Resuming from the checkpoint of epoch 2 instead" in out
    assert "resuming" in out and "after epoch 2" in out
    assert result["epochs"] == 4
    state = json.loads(trial.file(rundir.STATE_FILE).read_text())
    assert [row["epoch"] for row in state["history"] if row["epoch"]] == [1, 2, 3, 4]

    for path in trial.checkpoints().values():
        path.write_bytes(b"")
    state.update(finished=False, completed_epochs=4)
    trial.write_json(rundir.STATE_FILE, state)
    with pytest.raises(rundir.RunDirError, match="No older checkpoint .* loads either"):
        train_trial(trial, spec, cfg, data, seed=0, strategy=tf.distribute.get_strategy())


# -- items: read-only finished runs, disk use --------------------------------

def test_reading_a_finished_run_writes_nothing_and_the_summary_gives_its_size(
        parse, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = [*TINY, "--epochs=3", "--progress=none", f"--run_dir={run_dir}"]
    train.main(parse(train, *argv))
    out = capsys.readouterr().out
    assert sorted((run_dir / "checkpoints").iterdir()) == [
        run_dir / "checkpoints" / "epoch_0002.weights.h5",
        run_dir / "checkpoints" / "epoch_0003.weights.h5"]
    size = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
    assert f"run directory: {size / 1e3:.1f} kB ({run_dir})" in out

    before = snapshot(run_dir)
    time.sleep(0.01)  # a rewrite would get another mtime
    train.main(parse(train, *argv))
    assert "already finished" in capsys.readouterr().out
    evaluate.main(parse(evaluate, f"--run_dir={run_dir}",
                        f"--output_dir={tmp_path / 'evaluation'}"))
    assert snapshot(run_dir) == before
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["trials"][0]["epochs"] == [2, 3]
    assert (tmp_path / "evaluation" / "evaluation" / "conflicts.csv").exists()


# -- item: exports load with plain Keras --------------------------------------

def test_saved_keras_files_load_with_plain_keras_without_cb_keras(tmp_path):
    model = models.resnet([1, 1, 1, 1], (8, 8, 1), 10)
    path = tmp_path / "final.keras"
    serving.save_keras(model, path)
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import sys
        import keras, numpy as np
        model = keras.models.load_model({str(path)!r})  # safe_mode on
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.save({str(tmp_path / 'y.npy')!r}, model.predict(x, verbose=0))
        assert not any(name.startswith("cb_keras") for name in sys.modules), "imported cb_keras"
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x, training=False),
                               rtol=1e-5, atol=1e-6)


def test_strip_taps_keeps_the_outputs_and_refuses_subclassed_models():
    model = models.vgg([1, 1, 1, 1], (8, 8, 1), 10)
    stripped = cb_keras.taps.strip_taps(model)
    assert not any(isinstance(layer, cb_keras.taps.Tap) for layer in stripped.layers)
    assert any(isinstance(layer, cb_keras.taps.Tap) for layer in model.layers)
    x = np.ones((2, 8, 8, 1), np.float32)
    np.testing.assert_array_equal(stripped(x), model(x))

    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs
    with pytest.raises(ValueError, match="functional or Sequential"):
        cb_keras.taps.strip_taps(Subclassed())


# -- item: no retracing warnings from cb_keras's measurement -------------------

class Records(logging.Handler):
    """Keeps the messages of the records it handles."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_measuring_many_networks_and_shapes_logs_no_retracing_warning():
    records = Records()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(records)
    try:
        x, y = data.measurement_sample("digits", 32)
        for width in range(2, 9):
            model = models.fnn(1, width, x.shape[1:], 10)
            cb_keras.measure(model, x, y, num_classes=10, learning_rate=1e-3, batch_size=64,
                             samples=32)
            cb_keras.bundle_metrics(np.ones((8, width), np.float32), np.zeros(8, np.int32),
                                    num_classes=10, weight_amplitude=1.0,
                                    learning_rate=1e-3, batch_size=64)
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if "retracing" in m]


# -- CLI: one-line errors, lock, Ctrl-C ---------------------------------------

@pytest.mark.parametrize("setup, argv, message", [
    ("file", [], "is a file, not a run directory"),
    ("binary", [], "flags.json is not a valid run file"),
    ("none", ["--batch_size=5000"], "fewer than batch_size=5000"),
], ids=["run-dir-is-a-file", "binary-flags-json", "batch-larger-than-split"])
def test_errors_a_user_can_fix_are_their_message_alone(tmp_path, setup, argv, message):
    run_dir = tmp_path / "run"
    if setup == "file":
        run_dir.write_text("not a folder")
    elif setup == "binary":
        run_dir.mkdir()
        (run_dir / "flags.json").write_bytes(b"\x89PNG\x00\xff\xfe")
    done = experiments("train", *TINY, "--epochs=1", f"--run_dir={run_dir}", *argv)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 5 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "--helpfull" not in done.stderr


def wait_for_epoch(run_dir: pathlib.Path, process: subprocess.Popen) -> None:
    """Wait until the run in `run_dir` has committed an epoch."""
    state, deadline = run_dir / "state.json", time.monotonic() + 240
    while not (state.exists() and json.loads(state.read_text())["completed_epochs"]):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.05)


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child: SIGINT's default action, which Python turns into KeyboardInterrupt.

    A shell without job control starts background commands with SIGINT
    ignored, and children inherit that: pytest started with ``&`` (as a CI
    script may be) would otherwise give the command no Ctrl-C to react to.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_second_process_on_a_run_stops_at_once_and_ctrl_c_says_how_to_resume(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", *TINY, "--epochs=200", f"--run_dir={run_dir}"]
    first = subprocess.Popen([sys.executable, "-m", "experiments", *argv], cwd=ROOT, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_ctrl_c_as_in_a_terminal)
    try:
        wait_for_epoch(run_dir, first)
        second = experiments(*argv)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"train: error: {run_dir} is in use by pid {first.pid} on host "
            f"{os.uname().nodename} since " + second.stderr.split(" since ")[1].split(";")[0]
            + "; wait for it to end or pass another --run_dir or --name."]
        assert second.stdout == ""
    finally:
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert err.strip().splitlines()[-1] == \
        "train: interrupted; rerun the same command to resume."
    assert "Traceback" not in err
    # Only the command's own lines: no TensorFlow start-up or retracing noise.
    assert all(line.startswith(("train: ", "epoch ")) for line in out.splitlines()), out
    assert err.strip().splitlines() == ["train: interrupted; rerun the same command to resume."]


# -- item: auto_tune killed right after a restart ----------------------------

@pytest.fixture(scope="module")
def uninterrupted_search(tmp_path_factory) -> pathlib.Path:
    """The run directory of the restarting search (`conftest.RESTARTING_SEARCH`), never killed."""
    path = tmp_path_factory.mktemp("auto_tune") / "reference"
    flags.FLAGS.unparse_flags()
    try:
        auto_tune.main(flags.FLAGS([auto_tune.__name__, *RESTARTING_SEARCH, f"--run_dir={path}"]))
    finally:
        flags.FLAGS.unparse_flags()
    return path


def _killed_in(module, name: str, when) -> tuple:
    """(module, name, replacement): `module.name` raising KeyboardInterrupt when `when(args)`."""
    original = getattr(module, name)

    def replacement(*args, **kwargs):
        if when(*args):
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    return module, name, replacement


# Where the search is killed around its restart of attempt 0 after epoch 1:
KILL_POINTS = {
    # the first thing after the restart is saved, before attempt 0 commits epoch 1
    "after the restart": lambda: _killed_in(auto_tune, "restart_scalars", lambda *a: True),
    # attempt 0 ended epoch 1, the restart's epoch, which it commits with its result (without a
    # checkpoint), but has not measured its conflicts.csv
    "before attempt 0's conflicts": lambda: _killed_in(
        trial_code, "write_conflicts", lambda directory, *a: directory.path.name == "attempt00"),
    # attempt 0 is done and its checkpoints are deleted; attempt 1 has no checkpoint yet
    "before attempt 1 begins": lambda: _killed_in(
        trial_code, "begin_trial", lambda directory, *a: directory.path.name == "attempt01"),
}


@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_auto_tune_killed_around_a_restart_ends_as_the_uninterrupted_search(
        parse, tmp_path, monkeypatch, uninterrupted_search, kill_point):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(*KILL_POINTS[kill_point]())
        with pytest.raises(KeyboardInterrupt):
            auto_tune.main(parse(auto_tune, *RESTARTING_SEARCH, f"--run_dir={run_dir}"))
    killed_attempts = json.loads((run_dir / "search.json").read_text())["attempts"]
    assert killed_attempts[0]["restart"] and len(killed_attempts) == 2
    killed_trial = json.loads((run_dir / "attempt00" / "state.json").read_text())
    if kill_point == "before attempt 1 begins":
        assert killed_attempts[0]["summary"] is not None and killed_trial["finished"]
    else:  # the rerun trains attempt 0's epoch 1 again, from the seed
        assert killed_attempts[0]["summary"] is None and killed_trial["completed_epochs"] == 0
    assert not list((run_dir / "attempt00").glob("checkpoints/*"))
    auto_tune.main(parse(auto_tune, *RESTARTING_SEARCH, f"--run_dir={run_dir}"))

    reference, resumed = (json.loads((path / "results.json").read_text())
                          for path in (uninterrupted_search, run_dir))
    assert len(resumed["attempts"]) == len(reference["attempts"]) == 2
    for ran, expected in zip(resumed["attempts"], reference["attempts"]):
        assert ran["test_accuracy"] == pytest.approx(expected["test_accuracy"], rel=1e-5)
        assert ran["summary"].keys() == expected["summary"].keys()
        for key in expected["summary"].keys() - {"train_seconds", "dir"}:
            value = expected["summary"][key]
            assert ran["summary"][key] == (pytest.approx(value, rel=1e-5)
                                           if isinstance(value, float) else value), key
    assert (run_dir / "attempt00" / "conflicts.csv").read_text() == \
        (uninterrupted_search / "attempt00" / "conflicts.csv").read_text()
    for path in (run_dir, uninterrupted_search):  # the restarted run keeps no checkpoint
        assert not list((path / "attempt00").glob("checkpoints/*"))
        assert sorted(p.name for p in (path / "attempt01" / "checkpoints").iterdir()) == [
            "epoch_0001.weights.h5", "epoch_0002.weights.h5"]


# -- item: a full disk ---------------------------------------------------------

def test_a_full_disk_is_one_line_without_temporary_files_and_the_rerun_resumes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"a small file system to fill needs `mount -t tmpfs` (root): "
                    f"{mounted.stderr.strip()}")
    try:
        filler = disk / "filler"
        filler.write_bytes(bytes(260_000))  # leaves ~140 kB: epoch 2's checkpoint does not fit
        run_dir = disk / "run"
        argv = ["train", *TINY[:2], "--depth=3", "--width=40", *TINY[4:], "--epochs=3",
                "--progress=none", f"--run_dir={run_dir}"]
        full = experiments(*argv)
        assert full.returncode == 1, full.stderr[-3000:]
        assert full.stderr.strip().splitlines() == [
            f"train: error: no space left on device while writing {run_dir}/checkpoints/"
            "epoch_0002.weights.h5; free space and rerun the same command to resume."]
        assert not [p for p in run_dir.rglob("*") if "tmp" in p.name]

        filler.unlink()
        resumed = experiments(*argv)
        assert resumed.returncode == 0, resumed.stderr
        assert f"train: resuming {run_dir}" in resumed.stdout
        assert json.loads((run_dir / "results.json").read_text())["trials"][0]["epochs"] == 3
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_evaluate_of_a_search_skips_the_restarted_attempts_that_kept_no_checkpoint(
        parse, tmp_path, uninterrupted_search, capsys):
    output = tmp_path / "evaluation"
    evaluate.main(parse(evaluate, f"--run_dir={uninterrupted_search}",
                        f"--output_dir={output}"))
    evaluated = json.loads((output / evaluate.EVALUATION_FILE).read_text())["trials"]
    assert [pathlib.Path(t["dir"]).name for t in evaluated] == ["attempt01"]
    assert evaluated[0]["epochs"] == [1, 2]
    assert ("evaluate: skipping attempt00: it restarted and kept no checkpoint (its numbers are "
            "in search.json)") in capsys.readouterr().out
