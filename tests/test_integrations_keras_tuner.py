"""`cb_keras.integrations.keras_tuner`: stopping collapsing trials, in one process and distributed.

The networks and the search are in tests/search_workers.py: learning rate
0.1 trains, 50 collapses a^L into one bundle after epoch 1; the check
window is 2 epochs of 3. The distributed tests run a chief and two workers
on 127.0.0.1 (Keras Tuner's gRPC oracle), each a process of
tests/search_workers.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

keras_tuner = pytest.importorskip("keras_tuner")

import search_workers as workers  # noqa: E402  (tests/ is on sys.path)
from cb_keras.integrations.keras_tuner import ConflictStop, worst_score  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEADLINE = 300  # seconds a distributed search may take on a loaded 2-core machine


class ZeroLastHidden(keras.callbacks.Callback):
    """After epoch `epoch` (1-based), zero dense2: a^L becomes one bundle."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            layer = self.model.get_layer("dense2")
            layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])


def test_a_conflict_stops_training_and_every_epoch_scores_the_worst_value(capsys):
    x, y, x_val, y_val = workers.digits()
    model = workers.build(workers.HEALTHY)
    stop = ConflictStop(x, y, batch_size=64, check_window=3)
    history = model.fit(x, y, batch_size=64, epochs=4, verbose=0,
                        validation_data=(x_val, y_val), callbacks=[ZeroLastHidden(2), stop])
    assert stop.conflict.epoch == 2 and stop.conflict.num_bundles == 1
    assert history.history["val_accuracy"] == [0.0, 0.0]  # epoch 1 learned, yet scores 0
    assert len(history.history["loss"]) == 2  # stopped after epoch 2 of 4
    assert ("ConflictStop: a^L ('dense2_tap') conflicts after epoch 2: 1 bundle for 64 "
            "samples") in capsys.readouterr().out


def test_a_minimized_objective_needs_an_explicit_score():
    x, y, _, _ = workers.digits()
    assert worst_score("val_accuracy") == 0.0
    with pytest.raises(ValueError, match="'val_loss' is minimized .* pass score="):
        ConflictStop(x, y, batch_size=64, objective="val_loss")
    assert ConflictStop(x, y, batch_size=64, objective="val_loss", score=1e9).score == 1e9


def check_search(trials: list[dict]) -> None:
    """All 4 networks completed once; collapsing ones score 0, healthy ones learned."""
    assert sorted((t["hyperparameters"]["values"]["learning_rate"],
                   t["hyperparameters"]["values"]["width"]) for t in trials) == sorted(
        (rate, width) for rate in (workers.HEALTHY, workers.COLLAPSING) for width in (16, 32))
    for trial in trials:
        assert trial["status"] == "COMPLETED"
        if trial["hyperparameters"]["values"]["learning_rate"] == workers.COLLAPSING:
            assert trial["score"] == 0.0
        else:
            assert trial["score"] > 0.5


def trial_files(directory: pathlib.Path) -> list[dict]:
    return [json.loads(path.read_text())
            for path in sorted((directory / "digits").glob("trial_*/trial.json"))]


def test_random_search_scores_collapsing_trials_worst(tmp_path):
    tuner = workers.keras_tuner_search(str(tmp_path))
    check_search(trial_files(tmp_path))
    best = tuner.oracle.get_best_trials(1)[0]
    assert best.hyperparameters.values["learning_rate"] == workers.HEALTHY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(role: str, port: int, directory: pathlib.Path, markers: pathlib.Path | None = None,
          ) -> subprocess.Popen:
    env = {**os.environ, "KERASTUNER_TUNER_ID": role, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(port),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(ROOT / "tests" / "search_workers.py"), "keras_tuner",
               str(directory)] + ([str(markers)] if markers else [])
    return subprocess.Popen(command, env=env)


def wait(processes: list[subprocess.Popen]) -> list[int]:
    try:
        return [p.wait(timeout=DEADLINE) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()


def test_a_chief_and_two_workers_search_with_the_check_in_every_worker(tmp_path):
    port = free_port()
    chief = start("chief", port, tmp_path)
    workers_ = [start(f"tuner{k}", port, tmp_path) for k in range(2)]
    assert wait([*workers_, chief]) == [0, 0, 0]
    check_search(trial_files(tmp_path))


def test_killing_a_worker_mid_trial_loses_nothing_and_its_trial_is_retried(tmp_path):
    port, markers = free_port(), tmp_path / "markers"
    markers.mkdir()
    chief = start("chief", port, tmp_path / "search")
    workers_ = [start(f"tuner{k}", port, tmp_path / "search", markers) for k in range(2)]
    until = time.monotonic() + DEADLINE
    while not list(markers.glob("tuner0_*")):  # tuner0 began a trial
        assert time.monotonic() < until and chief.poll() is None
        time.sleep(0.2)
    killed_trial = next(markers.glob("tuner0_*")).name.split("_", 1)[1]
    time.sleep(0.3)  # inside its first epoch: every epoch ends with a 1 s sleep
    os.kill(workers_[0].pid, signal.SIGKILL)
    assert workers_[0].wait(timeout=30) == -signal.SIGKILL
    # A restarted worker with the same id gets its unfinished trial back from the oracle.
    restarted = start("tuner0", port, tmp_path / "search", markers)
    assert wait([restarted, workers_[1], chief]) == [0, 0, 0]
    trials = trial_files(tmp_path / "search")
    check_search(trials)  # every trial finished once, none lost, none counted twice
    assert killed_trial in {t["trial_id"] for t in trials}
    assert (markers / f"tuner0_{killed_trial}").read_text() == str(restarted.pid)  # retried
