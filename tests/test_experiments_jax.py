"""Every ``python -m experiments`` command on JAX, in a process that never imports TensorFlow.

Each command runs as a user runs it, with ``KERAS_BACKEND=jax`` and two XLA
host devices, on digits with tiny settings. A wrapper records which modules
the process imported: none of TensorFlow's, also where TensorFlow is
installed (docs/experiments.md, On JAX). Runs from any venv that has JAX.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                                reason="needs JAX: pip install -r requirements-jax.txt")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# `python -m experiments`, writing the TensorFlow modules it imported to $IMPORTED at exit.
WRAPPER = """
import atexit, json, os, runpy, sys

def imported():
    names = [name for name, module in sys.modules.items()
             if module is not None and name.split(".")[0] in ("tensorflow", "tensorflow_datasets")]
    with open(os.environ["IMPORTED"], "w") as f:
        json.dump(sorted(names), f)

atexit.register(imported)
sys.argv[0] = "experiments"
runpy.run_module("experiments", run_name="__main__", alter_sys=True)
"""
TINY = ["--dataset=digits", "--measure_samples=64", "--progress=none"]
RESNET = ["--latency_repeats=2", "--model=resnet", "--blocks=1,1,0,0", "--epochs=1", "--optimizer=adam",
          "--learning_rate=1e-9", "--noaugment", "--measure_every=0"]
VGG = ["--latency_repeats=2", "--model=vgg", "--blocks=1,1,0,0", "--epochs=2", "--check_window=1",
       "--max_restarts=1", "--learning_rate=1e-7", "--noaugment", "--noexport"]


def experiments(tmp_path: pathlib.Path, *argv: str, rc: int = 0) -> subprocess.CompletedProcess:
    """Run ``python -m experiments argv`` on JAX; assert its exit status and no TensorFlow."""
    imported = tmp_path / f"imported_{argv[0]}.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "IMPORTED": str(imported),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "CUDA_VISIBLE_DEVICES": "",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == rc, done.stdout + done.stderr
    assert json.loads(imported.read_text()) == []
    return done


def results(run_dir: pathlib.Path) -> dict:
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["finished"] is True
    return saved


def rows(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("jax_runs")


@pytest.fixture(scope="module")
def trained(folder) -> pathlib.Path:
    """A train run of a tiny FNN, data parallel over the two devices."""
    run_dir = folder / "train"
    done = experiments(folder, "train", *TINY, "--model=fnn", "--depth=2", "--width=16",
                       "--epochs=2", "--measure_layers=all", "--strategy=mirrored",
                       f"--run_dir={run_dir}")
    assert "note: no SavedModel export" in done.stdout
    return run_dir


@pytest.fixture(scope="module")
def pruned(folder) -> pathlib.Path:
    """A prune run that first trains a tiny ResNet into train/."""
    run_dir = folder / "prune"
    experiments(folder, "prune", *TINY, *RESNET, f"--run_dir={run_dir}")
    return run_dir


def test_train_is_data_parallel_and_writes_its_files_without_tensorboard_or_export(trained):
    saved = results(trained)
    assert saved["trials"][0]["seed"] == 0
    environment = json.loads((trained / "environment.json").read_text())
    assert environment["keras_backend"] == "jax"
    assert [int(r["epoch"]) for r in rows(trained / "metrics.csv")] == [0, 1, 2]
    assert 0.0 <= float(rows(trained / "metrics.csv")[-1]["test_accuracy"]) <= 1.0
    assert (trained / "conflicts.csv").exists() and (trained / "checkpoints").is_dir()
    assert not (trained / "export").exists()
    # --measure_layers=all: the per-epoch reports, but no TensorBoard events off TensorFlow
    reports = {p.name for p in (trained / "tensorboard").iterdir()}
    assert {"conflicts_epoch0000.json", "conflicts_epoch0001.json"} <= reports
    assert not [name for name in reports if name.startswith("events.out.tfevents")]


def test_evaluate_recomputes_the_trained_run(trained, folder):
    experiments(folder, "evaluate", f"--run_dir={trained}", "--samples=64")
    evaluation = json.loads((trained / "evaluation.json").read_text())
    last = float(rows(trained / "metrics.csv")[-1]["test_accuracy"])
    assert evaluation["trials"][0]["test_accuracy_by_epoch"]["2"] == pytest.approx(last, abs=1e-6)


def test_fnn_map_fills_its_grid(folder):
    run_dir = folder / "fnn_map"
    experiments(folder, "fnn_map", *TINY, "--depths=1", "--widths=4,8", "--epochs=1",
                "--noexport", f"--run_dir={run_dir}")
    cells = results(run_dir)["cells"]
    assert sorted((c["depth"], c["width"]) for c in cells) == [(1, 4), (1, 8)]
    assert (run_dir / "fnn_map.png").exists()


def test_prune_writes_keras_files_and_no_savedmodel(pruned):
    saved = results(pruned)
    assert saved["savedmodel_vs_pruned_max_abs_diff"] is None
    assert saved["before"]["savedmodel_bytes"] is None
    assert saved["pruned_vs_lesioned_max_abs_diff"] <= 1e-5
    assert saved["before"]["keras_bytes"] == (pruned / "original.keras").stat().st_size
    assert saved["after"]["latency_ms"] > 0
    assert not (pruned / "export").exists()


def test_lesion_of_the_pruned_runs_network(pruned, folder):
    run_dir = folder / "lesion"
    experiments(folder, "lesion", f"--source_run={pruned / 'train'}", "--lesion_draws=1",
                "--lesion_max_k=1", f"--run_dir={run_dir}")
    saved = results(run_dir)
    assert saved["blocks"] == ["stage1_block1", "stage2_block1"]
    assert (run_dir / "lesion.csv").exists() and (run_dir / "lesion.png").exists()


def test_auto_tune_restarts_and_saves_its_final_network(folder):
    run_dir = folder / "auto_tune"
    experiments(folder, "auto_tune", *TINY, *VGG, "--test_every=2", f"--run_dir={run_dir}")
    saved = results(run_dir)
    assert saved["final_latency_ms"] > 0
    assert (run_dir / "final.keras").exists() and not (run_dir / "export").exists()
    assert not (run_dir / "tensorboard").exists()  # restart scalars: restarts.csv only


def test_compare_runs_its_contestants(folder):
    run_dir = folder / "compare"
    experiments(folder, "compare", *TINY, *VGG, "--seeds=1", "--fixed_depths=4",
                "--contestants=fixed", f"--run_dir={run_dir}")
    assert [c["contestant"] for c in rows(run_dir / "cells.csv")] == ["vgg-d4"]
    assert (run_dir / "compare.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--dataset=mnist"], "comes from TensorFlow Datasets, which needs TensorFlow"),
    (["--export"], "--export: a SavedModel (export/) is written through TensorFlow"),
    (["--strategy=multi_worker"], "--strategy=multi_worker needs TensorFlow"),
    (["--strategy=mirrored", "--batch_size=33"], "must be multiples of 2"),
    (["--strategy=mirrored", "--devices=/gpu:7"], "this machine has no /gpu:7"),
])
def test_what_needs_tensorflow_or_does_not_split_is_one_line(tmp_path, argv, message):
    done = experiments(tmp_path, "train", "--model=fnn", "--depth=1", "--width=8", *argv,
                       f"--run_dir={tmp_path / 'run'}", rc=1)
    errors = [line for line in done.stderr.splitlines() if line.startswith("train: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert not (tmp_path / "run").exists()
