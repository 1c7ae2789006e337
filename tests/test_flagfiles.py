"""The papers' flagfiles: provenance headers and the reference's settings they encode."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import pytest
from absl import flags

from cb_keras.paper import data, models
from experiments import auto_tune, fnn_map, lesion, prune, train
from experiments.runtime import rundir
from experiments.runtime.config import TrainConfig
from experiments.options import model as model_flags
from experiments.options import run as run_flags
from experiments.options import training as training_flags
from experiments.trials.recipe import trial_data

FLAGS = flags.FLAGS
FLAGFILES = pathlib.Path(__file__).resolve().parents[1] / "flags"
PAPER_DATASETS = ("mnist", "cifar10", "svhn_cropped", "imagenette")
PAPERS = ("arXiv 2011.02956", "arXiv 2103.04331")
# Commits of peerdavid/conflicting-bundles the flagfiles may name.
REFERENCE_COMMITS = ("e6254fc", "22556fc", "37ea297", "ba6985f", "1a4c762", "8690359",
                     "9c0b9b5")


def _dataset(path: pathlib.Path) -> str | None:
    found = re.search(r"^--dataset=(\S+)$", path.read_text(), flags=re.M)
    return found.group(1) if found else None


# auto_tune_*.cfg name the auto-tune rule versions and are checked with those.
PAPER_FLAGFILES = sorted(
    path for path in FLAGFILES.glob("*.cfg")
    if not path.name.startswith("auto_tune_")
    and (_dataset(path) in PAPER_DATASETS or path.name.startswith("lesion_"))
    and "digits" not in path.name)


def _header(path: pathlib.Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


def test_the_paper_flagfiles_are_all_found():
    names = {path.name for path in PAPER_FLAGFILES}
    assert {"prune_cifar10.cfg", "lesion_cifar10.cfg", "prune_svhn.cfg", "lesion_svhn.cfg",
            "fnn_map_mnist.cfg", "train_fnn_mnist.cfg", "train_vgg_imagenette.cfg",
            "train_resnet_svhn.cfg"} <= names
    assert len(names) == 12
    assert len(ACCOUNTED_FLAGFILES) == 15  # and auto_tune_{cifar10,svhn,imagenette}.cfg


@pytest.mark.parametrize("path", PAPER_FLAGFILES, ids=lambda path: path.name)
def test_paper_flagfiles_state_paper_reference_commit_and_differences(path):
    header = _header(path)
    paper = re.search(r"^# Paper: (arXiv \d{4}\.\d{5})", header, flags=re.M)
    assert paper and paper.group(1) in PAPERS, f"{path.name}: no '# Paper: arXiv ...' line"
    reference = re.search(r"^# Reference: peerdavid/conflicting-bundles ([0-9a-f]{7}) ",
                          header, flags=re.M)
    assert reference and reference.group(1) in REFERENCE_COMMITS, \
        f"{path.name}: no '# Reference: peerdavid/conflicting-bundles <commit>' line"
    assert re.search(r"^# Differences:\n#   \S", header, flags=re.M), \
        f"{path.name}: no '# Differences:' paragraph"


# The paper flagfiles and the auto-tune ones of the papers' data sets.
ACCOUNTED_FLAGFILES = PAPER_FLAGFILES + sorted(
    path for path in FLAGFILES.glob("auto_tune_*.cfg") if _dataset(path) in PAPER_DATASETS)
COMMANDS = {"train": train, "fnn": fnn_map, "prune": prune, "auto": auto_tune}


@pytest.mark.parametrize("path", ACCOUNTED_FLAGFILES, ids=lambda path: path.name)
def test_paper_flagfiles_say_which_accounting_they_use_and_use_it(parse, path):
    header = _header(path)
    said = re.search(r"^# Accounting: (?:that of the source run, flags/(\S+)'s\n#\s+)?"
                     r"--accounting=(\w+)", header, flags=re.M)
    assert said, f"{path.name}: no '# Accounting: --accounting=...' line"
    source, accounting = said.groups()
    if path.name.startswith("lesion_"):
        assert source == f"prune_{path.name.split('_')[1]}", path.name
        path = FLAGFILES / source
    parse(COMMANDS[path.name.split("_")[0]], f"--flagfile={path}")
    cfg = training_flags.training_config()
    assert cfg.accounting == accounting == "reference"
    assert cfg.trained_epochs == cfg.epochs - 1  # the reference's loop skips the last


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
def test_prune_flagfiles_train_the_reference_120_layer_resnet(parse, dataset):
    parse(prune, f"--flagfile={FLAGFILES / f'prune_{dataset}.cfg'}")
    spec = model_flags.model_spec()
    assert spec.kind == "resnet" and spec.blocks == (3, 12, 41, 3)
    assert sum(spec.blocks) == 59
    assert models.paper_blocks(120) == [3, 12, 41, 3]
    cfg = training_flags.training_config()
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.optimizer, cfg.augment) == (
        120, 64, 1e-3, "paper", True)
    assert cfg.measure_samples == 64  # the reference's conflicting_samples_size
    assert cfg.dataset == {"cifar10": "cifar10", "svhn": "svhn_cropped"}[dataset]


@pytest.mark.parametrize("dataset", ["cifar10", "svhn"])
def test_lesion_flagfiles_use_the_reference_k_ranges_on_the_pruned_runs_network(
        parse, dataset):
    parse(lesion, f"--flagfile={FLAGFILES / f'lesion_{dataset}.cfg'}")
    assert (lesion.K_RULE.value, lesion.DRAWS.value) == ("reference", 15)
    assert FLAGS.source_run == f"runs/prune_{dataset}/train"
    parse(prune, f"--flagfile={FLAGFILES / f'prune_{dataset}.cfg'}")
    assert run_flags.NAME.value == f"prune_{dataset}"


@pytest.mark.parametrize("prune_name, lesion_name", [
    ("prune_digits", "lesion_digits"), ("prune_digits_r120", "lesion_digits_r120")])
def test_digits_lesion_flagfiles_study_the_network_their_prune_flagfile_trains(
        parse, prune_name, lesion_name):
    parse(lesion, f"--flagfile={FLAGFILES / f'{lesion_name}.cfg'}")
    assert FLAGS.source_run == f"runs/{prune_name}/train"
    assert run_flags.NAME.value == lesion_name
    parse(prune, f"--flagfile={FLAGFILES / f'{prune_name}.cfg'}")
    assert run_flags.NAME.value == prune_name


@pytest.mark.parametrize("name, module, buffer", [
    ("train_fnn_mnist.cfg", train, 10), ("fnn_map_mnist.cfg", fnn_map, 10),
    ("fnn_map_mnist5k.cfg", fnn_map, data.SHUFFLE_BUFFER),
    ("train_vgg_cifar10.cfg", train, data.SHUFFLE_BUFFER)])
def test_mnist_flagfiles_shuffle_like_the_reference(parse, name, module, buffer):
    parse(module, f"--flagfile={FLAGFILES / name}")
    assert training_flags.training_config().shuffle_buffer == buffer


def test_shuffle_buffer_reaches_the_data_pipeline(parse):
    parse(train, "--dataset=digits", "--shuffle_buffer=1", "--batch_size=479", "--noaugment")
    cfg = training_flags.training_config()
    train_batches = trial_data(cfg).training_batches(shuffle_seed=5)
    in_order, _, _ = data.load("digits", batch_size=479, augment=False, shuffle_seed=5,
                               shuffle_buffer=1)
    shuffled, _, _ = data.load("digits", batch_size=479, augment=False, shuffle_seed=5)
    first = next(iter(train_batches))[1].numpy()
    np.testing.assert_array_equal(first, next(iter(in_order))[1].numpy())
    assert not np.array_equal(first, next(iter(shuffled))[1].numpy())


def test_runs_recorded_before_the_shuffle_buffer_flag_still_load(parse):
    parse(train, "--dataset=digits")
    saved = dataclasses.asdict(training_flags.training_config())
    del saved["shuffle_buffer"]
    assert TrainConfig.from_flags(saved).shuffle_buffer == data.SHUFFLE_BUFFER
    del saved["epochs"]
    with pytest.raises(rundir.RunDirError, match=r"lacks the training flags \['epochs'\]"):
        TrainConfig.from_flags(saved)
