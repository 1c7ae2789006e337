"""prune: remove the conflicting residual blocks of a trained ResNet and export it.

    python -m experiments prune --flagfile=flags/prune_digits.cfg
    python -m experiments prune --source_run=runs/<train run of a resnet>

With --source_run, loads the final network of that run (see
`experiments.trials.trained`) and uses that run's own training flags (the training
and model flags given here are then ignored); without it, first trains the network given by the
training and model flags (``--model=resnet``, seed --seed) into ``train/``
of this run, with the `train` command's code. Then:

1. measures the residual branch of every block on the run's measurement
   sample and finds the conflicting blocks (bundle entropy > 0; docs/method.md §4);
2. removes them with `cb_keras.pruning.remove_blocks` and checks that the
   pruned network's outputs on a test batch equal the lesioned original's
   (else it stops with an error);
3. fine-tunes the pruned network for --finetune_epochs (0: none) with the
   run's optimizer and data;
4. exports it as SavedModel (``export/``) and ``pruned.keras`` (the
   original as ``original.keras``), reloads the SavedModel and compares its
   outputs with the pruned network's. Off TensorFlow there is no SavedModel:
   its two numbers are null and a one-line note says why.

Writes ``branches.csv`` (bundle metrics of every block's branch) and
``results.json``: ``command``, ``source`` (the trial), ``spec``, ``dataset``,
``blocks`` (all, in order), ``conflicting_blocks`` (the removed ones),
``removed_block_fraction``, ``removed_weight_layer_fraction``,
``finetune_epochs``, ``test_accuracy_pruned_before_finetune``,
``pruned_vs_lesioned_max_abs_diff``, ``savedmodel_vs_pruned_max_abs_diff``,
and ``before`` / ``after``, each with ``blocks``, ``weight_layers`` (Conv and
Dense layers, projections included), ``parameters``, ``test_accuracy`` (whole
test split, final weights), ``latency_ms`` (median of --latency_repeats calls
on one test batch of --batch_size images), ``keras_bytes`` and
``savedmodel_bytes`` (size on disk).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import keras
import numpy as np
from absl import app, flags

from cb_keras import pruning
from cb_keras.paper.spec import NetworkSpec
from experiments.runtime import command, console, rundir, serving
from experiments.trials import recipe, trained, trial
from experiments.runtime.config import RunConfig, StrategyConfig, TrainConfig
from experiments.options import model as model_flags
from experiments.options import run as run_flags
from experiments.options import source as source_flags
from experiments.options import strategy as strategy_flags
from experiments.options import training as training_flags
from experiments.runtime.strategy import Placement

FINETUNE_EPOCHS = flags.DEFINE_integer(
    "finetune_epochs", 0, "Epochs of training after the removal (0: none).", lower_bound=0)
flags.adopt_module_key_flags(run_flags)
flags.adopt_module_key_flags(strategy_flags)
flags.adopt_module_key_flags(training_flags)
flags.adopt_module_key_flags(model_flags)
flags.adopt_module_key_flags(source_flags)

BRANCHES_FILE = "branches.csv"
ORIGINAL_FILE = "original.keras"
PRUNED_FILE = "pruned.keras"
TRAIN_DIR = "train"
MATCH_TOLERANCE = 1e-5  # of the largest |output| (at least 1): float32 rounding of a deep net
TABLE_COLUMNS = (
    ("network", "network", ""),
    ("blocks", "blocks", "d"),
    ("weight_layers", "weight_layers", "d"),
    ("parameters", "parameters", ",d"),
    ("test_accuracy", "test_acc", ".4f"),
    ("latency_ms", "latency_ms", ".2f"),
    ("keras_bytes", ".keras bytes", ",d"),
    ("savedmodel_bytes", "SavedModel bytes", ",d"),
)


@dataclasses.dataclass(frozen=True)
class Config:
    """What the flags of `prune` say; `spec` is None with a --source_run."""

    run: RunConfig
    strategy: StrategyConfig
    training: TrainConfig
    spec: NetworkSpec | None
    source_run: str | None
    finetune_epochs: int
    latency_repeats: int


def read_flags() -> Config:
    """The flags of `prune`, read once.

    Raises:
        app.UsageError: without --source_run, a network that is not a resnet.
    """
    source = source_flags.SOURCE_RUN.value
    return Config(run_flags.run_config("prune", __name__), strategy_flags.strategy_config(),
                  training_flags.training_config(), None if source else _resnet_spec(),
                  source, FINETUNE_EPOCHS.value, source_flags.LATENCY_REPEATS.value)


def _resnet_spec() -> NetworkSpec:
    """The --model/--depth/--blocks network, which must be a resnet."""
    spec = model_flags.model_spec()
    if spec.kind != "resnet":
        raise app.UsageError(
            f"prune removes residual blocks, so it needs --model=resnet (got "
            f"--model={spec.kind}), or --source_run=<a train run of a resnet>.")
    return spec


def prune(source: trained.Trained, run: rundir.RunDir, finetune_epochs: int,
          repeats: int) -> dict[str, Any]:
    """Find, remove, fine-tune and export the conflicting blocks of `source`.

    Returns the results.json dict (module docstring).
    """
    found = source.conflicts()
    if run.writer:
        found.report.save_csv(run.file(BRANCHES_FILE))
    pruned = pruning.remove_blocks(source.model, found.conflicting)
    batch = next(iter(source.data.test))[0]
    lesioned = pruning.lesioned(source.model, found.conflicting)
    lesion_diff = _checked_difference(pruned(batch, training=False),
                                      lesioned(batch, training=False),
                                      "the original network with these blocks lesioned")
    pruned_accuracy = serving.accuracy(pruned, source.data.test)
    before = _measure(source.model, len(found.blocks), source, run.file(ORIGINAL_FILE), None)
    if finetune_epochs:
        _finetune(pruned, source, finetune_epochs)
    after = _measure(pruned, len(found.non_conflicting), source, run.file(PRUNED_FILE), run)
    before["latency_ms"], after["latency_ms"] = serving.latencies_ms(
        [source.model, pruned], batch, repeats)
    return {
        "command": "prune", "source": str(source.trial.path), "spec": source.spec.to_dict(),
        "dataset": source.data.config.dataset, "blocks": found.names,
        "conflicting_blocks": found.conflicting,
        "removed_block_fraction": len(found.conflicting) / len(found.blocks),
        "removed_weight_layer_fraction":
            1.0 - after["weight_layers"] / before["weight_layers"],
        "finetune_epochs": finetune_epochs,
        "test_accuracy_pruned_before_finetune": pruned_accuracy,
        "pruned_vs_lesioned_max_abs_diff": lesion_diff,
        "savedmodel_vs_pruned_max_abs_diff": _savedmodel_diff(run, pruned, batch)
        if serving.CAN_EXPORT else None,
        "before": before, "after": after,
    }


def _measure(model: keras.Model, blocks: int, source: trained.Trained,
             keras_file: pathlib.Path, export_run: rundir.RunDir | None) -> dict[str, Any]:
    """Size, test accuracy and files of one network (`serving.describe` + more)."""
    return {
        **serving.describe(model, blocks),
        "test_accuracy": serving.accuracy(model, source.data.test),
        "keras_bytes": serving.save_keras(model, keras_file),
        "savedmodel_bytes": serving.export_size(model, export_run) if serving.CAN_EXPORT
        else None,
    }


def _finetune(model: keras.Model, source: trained.Trained, epochs: int) -> None:
    """Train `model` `epochs` more epochs with the run's optimizer, loss and data."""
    recipe.compile_model(model, source.data.config)
    model.fit(source.data.training_batches(shuffle_seed=source.data.config.seed), epochs=epochs,
              verbose=2)


def _savedmodel_diff(run: rundir.RunDir, model: keras.Model, batch: Any) -> float:
    """Reload export/ with tf.saved_model.load; max |served - model| on `batch` (TensorFlow only)."""
    import tensorflow as tf

    served = tf.saved_model.load(str(run.file(serving.EXPORT_DIR)))
    return _checked_difference(served.serve(batch), model(batch, training=False),
                               f"the SavedModel in {run.file(serving.EXPORT_DIR)}")


def _checked_difference(pruned, reference, what: str) -> float:
    """max |pruned - reference|; RuntimeError if they differ beyond float32 rounding.

    The bound scales with the outputs: logits of size 30 differ by ~5e-5
    between two correct float32 evaluations that fuse ops differently.
    """
    pruned, reference = np.asarray(pruned), np.asarray(reference)
    difference = float(np.max(np.abs(pruned - reference)))
    if difference > MATCH_TOLERANCE * max(1.0, float(np.max(np.abs(reference)))):
        raise RuntimeError(
            f"the pruned network computes other outputs than {what} (max abs difference "
            f"{difference:.3g}); this is a bug in cb_keras.pruning, please report it.")
    return difference


def summary_table(results: dict[str, Any]) -> str:
    """Before and after as a table, with the removed blocks."""
    rows = [{"network": "original", **results["before"]},
            {"network": "pruned", **results["after"]}]
    return (f"{len(results['conflicting_blocks'])} of {len(results['blocks'])} blocks "
            f"conflicting and removed ({results['removed_block_fraction']:.0%}; "
            f"{results['removed_weight_layer_fraction']:.0%} of the weight layers): "
            f"{', '.join(results['conflicting_blocks']) or '-'}\n"
            + console.table(rows, TABLE_COLUMNS))


def train_and_prune(run: rundir.RunDir, cfg: Config, data: Callable[[], recipe.TrialData],
                    dist: Placement) -> dict[str, Any]:
    """Prune the network of --source_run (with the data of its own flags), or of a trial
    trained first into ``train/`` on ``data()`` (`recipe.data_once`)."""
    if cfg.source_run:
        source = trained.load_trial(cfg.source_run)
    else:
        trial.train_trial(run.sub(TRAIN_DIR), cfg.spec, cfg.training, data(),
                          seed=cfg.training.seed, strategy=dist)
        source = trained.load_trial(run.sub(TRAIN_DIR).path, data())
    return prune(source, run, cfg.finetune_epochs, cfg.latency_repeats)


def main(argv: list[str]) -> None:
    """Prune the network of --source_run (or train one first) and print before/after."""
    command.no_arguments("prune", argv)
    cfg = read_flags()
    readable = pathlib.Path(cfg.source_run).name if cfg.source_run else \
        f"{cfg.spec.label}_{cfg.training.dataset}"
    data = recipe.data_once(cfg.training)
    command.execute(cfg.run, readable, lambda run, dist: train_and_prune(run, cfg, data, dist),
                    summary_table, cfg.strategy,
                    check=lambda: trained.check_residual_source(cfg.source_run)
                    if cfg.source_run else data())


if __name__ == "__main__":
    app.run(main)
