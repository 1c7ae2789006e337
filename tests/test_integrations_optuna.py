"""`cb_keras.integrations.optuna`: pruning collapsing trials, in one process and in two.

The networks and the objective are in tests/search_workers.py: learning
rate 0.1 trains, 50 collapses a^L into one bundle after epoch 1; the check
window is 2 epochs of 3.
"""

from __future__ import annotations

import glob
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import keras
import pytest

optuna = pytest.importorskip("optuna")

import search_workers as workers  # noqa: E402  (tests/ is on sys.path)
from cb_keras.integrations.optuna import ConflictPruningCallback  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRUNED, COMPLETE = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE


def test_a_collapsing_trial_is_pruned_after_its_first_conflicting_epoch_with_a_message():
    study = optuna.create_study(direction="maximize")
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1.0, 100.0)})
    x, y, _, _ = workers.digits()
    model = workers.build(workers.COLLAPSING)
    check = ConflictPruningCallback(trial, x, y, batch_size=workers.BATCH, check_window=2)
    begun = []
    counter = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: begun.append(epoch))
    with pytest.raises(optuna.TrialPruned,
                       match=r"^trial 0 pruned: a\^L \('dense2_tap'\) conflicts after epoch 1: "
                             r"1 bundle for 64 samples \(bundle entropy 2\.\d{4} nats\)\.$"):
        model.fit(x, y, batch_size=workers.BATCH, epochs=3, verbose=0, callbacks=[check, counter])
    assert trial.user_attrs["conflict"] == {**check.conflict.to_dict(), "epoch": 1}
    assert check.conflict.num_bundles == 1 and check.conflict.samples == 64
    assert trial.user_attrs["bundle_entropy"] == [check.conflict.bundle_entropy]
    assert begun == [0]  # training stopped in epoch 1


def test_the_check_at_initialization_prunes_before_training():
    study = optuna.create_study()
    trial = study.ask()
    x, y, _, _ = workers.digits()
    deep = workers.build(workers.HEALTHY, width=4, depth=30)  # one bundle when built
    check = ConflictPruningCallback(trial, x, y, batch_size=64, check_at_init=True)
    with pytest.raises(optuna.TrialPruned, match="conflicts at initialization: 1 bundle"):
        deep.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[check])
    assert trial.user_attrs["conflict"]["epoch"] == 0


def test_with_median_pruner_healthy_completes_collapsing_and_slow_trials_are_pruned():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(
        n_startup_trials=1, n_warmup_steps=0))
    for rate in (workers.HEALTHY, workers.COLLAPSING, 1e-4):
        study.enqueue_trial({"learning_rate": rate})
    study.optimize(workers.optuna_objective, n_trials=3)
    healthy, collapsing, slow = study.trials
    assert healthy.state == COMPLETE and healthy.value > 0.5
    assert "conflict" not in healthy.user_attrs
    assert len(healthy.user_attrs["bundle_entropy"]) == workers.WINDOW  # checked 1..window
    assert sorted(healthy.intermediate_values) == [1, 2, 3]  # monitor reported every epoch
    assert collapsing.state == PRUNED
    assert collapsing.user_attrs["conflict"]["epoch"] == 1
    assert collapsing.user_attrs["conflict"]["num_bundles"] == 1
    # 1e-4 barely learns: the median pruner stops it after epoch 1, not the check
    assert slow.state == PRUNED and "conflict" not in slow.user_attrs
    assert list(slow.intermediate_values) == [1]
    assert slow.intermediate_values[1] < healthy.intermediate_values[1]


def test_an_unknown_monitor_names_the_logs():
    study = optuna.create_study()
    x, y, _, _ = workers.digits()
    check = ConflictPruningCallback(study.ask(), x, y, batch_size=64, monitor="val_acc")
    with pytest.raises(ValueError, match=r"monitor='val_acc' is not among the epoch's logs"):
        workers.build(workers.HEALTHY).fit(x, y, batch_size=64, epochs=1, verbose=0,
                                           callbacks=[check])


def storage_processes(storage: str, trials_each: int) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    return [subprocess.Popen([sys.executable, str(ROOT / "tests" / "search_workers.py"),
                              "optuna", storage, str(trials_each)], env=env)
            for _ in range(2)]


def optimize_in_two_processes(storage, url: str) -> optuna.Study:
    """Enqueue 2 healthy and 2 collapsing trials; two processes optimize 2 trials each."""
    study = optuna.create_study(study_name="digits", storage=storage, direction="maximize")
    for rate in (workers.HEALTHY, workers.COLLAPSING) * 2:
        study.enqueue_trial({"learning_rate": rate})
    processes = storage_processes(url, 2)
    assert [p.wait(timeout=300) for p in processes] == [0, 0]
    return optuna.load_study(study_name="digits", storage=storage)


def check_two_process_study(study: optuna.Study) -> None:
    trials = study.trials
    assert len(trials) == 4
    assert len({t.user_attrs["pid"] for t in trials}) == 2  # both processes ran trials
    for trial in trials:
        if trial.params["learning_rate"] == workers.COLLAPSING:
            assert trial.state == PRUNED
            assert 1 <= trial.user_attrs["conflict"]["epoch"] <= workers.WINDOW
        else:
            assert trial.state == COMPLETE and trial.value > 0.5


def test_two_processes_optimize_one_study_in_one_journal_file(tmp_path):
    path = str(tmp_path / "journal.log")
    study = optimize_in_two_processes(workers.optuna_storage(path), path)
    check_two_process_study(study)


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own on 127.0.0.1 (about 5 s to start), as a database URL.

    Skipped, with the reason, without the driver psycopg2 or the server
    programs (Debian: ``apt-get install postgresql``).
    """
    pytest.importorskip("psycopg2", reason="PostgreSQL storage needs psycopg2-binary")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not found[-1]:
        pytest.skip("no PostgreSQL server programs (initdb) here: apt-get install postgresql")
    bin_dir = pathlib.Path(found[-1]).parent
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # not as root
    home = tempfile.mkdtemp(prefix="cb_keras_pg_")
    if as_user:
        shutil.chown(home, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = os.path.join(home, "data")

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    try:
        run(str(bin_dir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres")
        run(str(bin_dir / "pg_ctl"), "-D", data, "-w", "-l", os.path.join(home, "log"),
            "-o", f"-k {home} -p {port} -c listen_addresses=127.0.0.1", "start")
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "optuna")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", data, "-m", "immediate",
                        "stop"], capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def test_two_processes_optimize_one_study_in_postgresql(postgres_url):
    check_two_process_study(optimize_in_two_processes(postgres_url, postgres_url))


def test_import_cb_keras_imports_no_search_library():
    code = ("import sys, cb_keras, cb_keras.integrations, cb_keras.integrations.window; "
            "print(sorted({'optuna', 'keras_tuner'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip().splitlines()[-1] == "[]"
