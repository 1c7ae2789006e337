"""`python -m experiments` as a user runs it: listing, help, errors, SIGKILL and resume."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def experiments(*argv: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    """Run ``python -m experiments argv`` from the repository root."""
    done = subprocess.run([sys.executable, "-m", "experiments", *argv], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    if check_rc is not None:
        assert done.returncode == check_rc, done.stdout + done.stderr
    return done


def test_without_a_command_it_lists_the_commands():
    out = experiments().stdout
    for command in ("train", "evaluate", "fnn_map"):
        assert re.search(rf"^  {command} ", out, re.MULTILINE), out
    wrong = experiments("trian", check_rc=2)
    assert "Unknown command 'trian'" in wrong.stderr and "fnn_map" in wrong.stderr


def test_a_backend_the_commands_do_not_support_is_one_line():
    done = subprocess.run([sys.executable, "-m", "experiments", "train", "--dataset=digits"],
                          cwd=ROOT, env={**ENV, "KERAS_BACKEND": "torch"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "train: error: the experiment commands need KERAS_BACKEND=tensorflow or jax, not "
        "'torch' "
        "(cb_keras's measure, callback and pruning work on every backend)."]


@pytest.mark.parametrize("grappler, disabled", [(None, True), ("0", True), ("1", False)])
def test_commands_run_tensorflow_with_onednn_and_without_grappler_unless_told(
        grappler, disabled):
    # What experiments/__init__.py promises the commands and benchmarks; a
    # value the user set wins.
    env = {k: v for k, v in ENV.items() if k not in ("CB_KERAS_GRAPPLER", "TF_ENABLE_ONEDNN_OPTS")}
    if grappler is not None:
        env["CB_KERAS_GRAPPLER"] = grappler
    code = ("import json, os, experiments, tensorflow as tf; experiments.configure_tensorflow(); "
            "print(json.dumps([os.environ['TF_ENABLE_ONEDNN_OPTS'], "
            "tf.config.optimizer.get_experimental_options().get('disable_meta_optimizer', "
            "False)]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["1", disabled]


def test_a_refused_flag_combination_is_one_line_not_the_flag_help(tmp_path):
    done = experiments("evaluate", f"--run_dir={tmp_path}", check_rc=1)
    assert done.stderr.strip().splitlines() == [
        f"evaluate: error: {tmp_path} holds no run (no flags.json); pass the directory a "
        "train or fnn_map command wrote. (--helpshort lists the flags)"]


def test_a_wrong_grappler_setting_is_one_clear_line():
    done = subprocess.run([sys.executable, "-m", "experiments", "train", "--help"], cwd=ROOT,
                          env={**ENV, "CB_KERAS_GRAPPLER": "off"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "CB_KERAS_GRAPPLER must be 0 (Grappler off, the default) or 1 (on), got 'off'; "
        "unset it or set one of those."]


def test_helpfull_documents_every_flag_of_the_command():
    out = experiments("train", "--helpfull", check_rc=1).stdout  # absl exits 1 after help
    for name in ("model", "depth", "blocks", "width", "dataset", "data_dir", "augment",
                 "epochs", "batch_size", "learning_rate", "optimizer", "seed", "seeds",
                 "test_every", "measure_every", "measure_layers", "measure_samples",
                 "measure_sample_source",
                 "keep_checkpoints", "export", "progress", "strategy", "devices",
                 "runs_root", "name", "run_dir"):
        assert re.search(rf"--(\[no\])?{name}:", out), name


def test_a_bad_flag_exits_with_a_message_naming_the_choices():
    done = experiments("fnn_map", "--dataset=imagenet", check_rc=1)
    assert "--dataset" in done.stderr and "digits" in done.stderr


def test_a_missing_tfds_data_set_is_a_message_not_a_traceback(tmp_path):
    done = experiments("train", "--model=fnn", "--depth=1", "--width=4", "--dataset=mnist",
                       "--epochs=1", f"--data_dir={tmp_path / 'tfds'}",
                       f"--run_dir={tmp_path / 'run'}", check_rc=1)
    output = done.stdout + done.stderr
    assert "TFDS data set 'mnist' is not prepared" in output and "tfds build mnist" in output
    assert "Traceback" not in output


def read_metrics(run_dir: pathlib.Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sigkill_after_the_first_epoch_loses_nothing_and_rerunning_resumes(tmp_path):
    run_dir = tmp_path / "run"
    argv = ["train", "--dataset=digits", "--depth=2", "--width=8", "--epochs=8",
            "--optimizer=adam", "--measure_samples=64", "--noexport", f"--run_dir={run_dir}"]
    process = subprocess.Popen([sys.executable, "-m", "experiments", *argv], cwd=ROOT,
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file, deadline = run_dir / "state.json", time.monotonic() + 240
    while not (state_file.exists() and json.loads(state_file.read_text())["completed_epochs"]):
        assert process.poll() is None and time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(state_file.read_text())["completed_epochs"]
    assert 1 <= killed_at < 8 and not (run_dir / "results.json").exists()
    before = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in before] == list(range(killed_at + 1))  # 0: init

    resumed = experiments(*argv)
    assert f"resuming {run_dir}" in resumed.stdout
    assert f"resuming {run_dir} after epoch {killed_at}" in resumed.stdout
    assert f"epoch {killed_at}/8" not in resumed.stdout  # finished epochs are not redone
    after = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in after] == list(range(9))
    assert after[:killed_at + 1] == before
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and results["trials"][0]["epochs"] == 8

    again = experiments(*argv)
    assert "already finished" in again.stdout and "epoch 1/8" not in again.stdout

    # Model, optimizer state and the per-epoch data seeds are restored: the
    # resumed run computes what an uninterrupted one computes.
    experiments(*argv[:-1], f"--run_dir={tmp_path / 'uninterrupted'}")
    reference = read_metrics(tmp_path / "uninterrupted")
    assert after[0] == reference[0]  # a^L of the untrained network
    for column in ("loss", "accuracy", "test_accuracy", "bundle_entropy"):
        assert [float(r[column]) for r in after[1:]] == pytest.approx(
            [float(r[column]) for r in reference[1:]], rel=1e-5), column


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_multi_worker_strategy_trains_with_two_workers_and_the_chief_writes(tmp_path):
    run_dir = tmp_path / "run"
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    argv = [sys.executable, "-m", "experiments", "train", "--dataset=digits", "--depth=2",
            "--width=8", "--epochs=2", "--measure_samples=64", "--noexport",
            "--strategy=multi_worker", f"--run_dir={run_dir}"]
    workers = [subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**ENV, "TF_CONFIG": json.dumps({"cluster": cluster,
                                             "task": {"type": "worker", "index": i}})})
        for i in range(2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert all("test_acc(last5)" in out for out in outputs)
    assert [int(r["epoch"]) for r in read_metrics(run_dir)] == [0, 1, 2]  # 0: init
    assert json.loads((run_dir / "results.json").read_text())["finished"]
    assert not list(run_dir.rglob(".tmp*"))  # one writer: no torn or competing files


def test_installing_adds_no_top_level_experiments_package_and_the_checkout_wins(tmp_path):
    """`pip install` puts only cb_keras on the path, and ``python -m experiments``
    run from the checkout finds its own mains even when another package named
    ``experiments`` is installed."""
    source, wheel_dir = tmp_path / "source", tmp_path / "wheel"
    source.mkdir()  # a copy: setuptools writes its build/ folder into the source tree
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, source)
    for package in ("cb_keras", "experiments"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                    "-q", "-w", str(wheel_dir), str(source)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = wheel_dir.glob("cb_keras-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"cb_keras"}

    other = tmp_path / "site" / "experiments"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (other / "__main__.py").write_text("raise SystemExit('the other experiments package')")
    done = subprocess.run([sys.executable, "-m", "experiments", "--help"], cwd=ROOT,
                          env={**ENV, "PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "auto_tune" in done.stdout
