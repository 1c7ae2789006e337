"""The flags of every command that trains networks, and the `TrainConfig` they make.

Defaults are the papers' hyperparameters (batch 64, learning rate 1e-3,
Lookahead(RAdam), 120 epochs, 512 measurement samples) on the offline
``digits`` data set; the flagfiles in flags/ set the rest.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from cb_keras import bundles
from cb_keras.paper import data, evaluation
from experiments.runtime import rundir, serving
from experiments.runtime.config import TrainConfig
from experiments.trials.recipe import OPTIMIZERS

DATASET = flags.DEFINE_enum(
    "dataset", "digits", list(data.NAMES),
    "Data set: digits (scikit-learn) or mnist5k (cb_keras[mnist5k]), both offline, or a "
    "TensorFlow Datasets name of the papers (imagenette/<config>: another Imagenette release).")
DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TensorFlow Datasets folder (default: TFDS's own, ~/tensorflow_datasets).")
AUGMENT = flags.DEFINE_bool(
    "augment", True, "Augment training batches as the papers do (docs/method.md §5).")
EPOCHS = flags.DEFINE_integer("epochs", 120, "Training epochs.", lower_bound=1)
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 64, "Global training batch size (also the bundle metric's bs).",
    lower_bound=1)
LEARNING_RATE = flags.DEFINE_float(
    "learning_rate", 1e-3, "Learning rate (also the bundle metric's lr), > 0.")
OPTIMIZER = flags.DEFINE_enum(
    "optimizer", "paper", list(OPTIMIZERS),
    "paper: Lookahead(RAdam(eps 1e-6, weight decay 1e-2)) of the papers; radam: RAdam "
    "alone; adam / sgd: Keras's own.")
SEED = flags.DEFINE_integer(
    "seed", 0, "Seed of the first training; the k-th of --seeds uses seed + k.")
SEEDS = flags.DEFINE_integer(
    "seeds", 1, "Independent trainings per network (seeds --seed, --seed + 1, ...), for "
    "mean and std.", lower_bound=1)
TEST_EVERY = flags.DEFINE_integer(
    "test_every", 1,
    "Evaluate the test split every k epochs (and always in the last 5, whose mean is "
    "the reported test accuracy).", lower_bound=1)
MEASURE_EVERY = flags.DEFINE_integer(
    "measure_every", 1, "Measure bundles every k epochs (0: never during training).",
    lower_bound=0)
MEASURE_LAYERS = flags.DEFINE_enum(
    "measure_layers", "last", ["last", "all"],
    "Layers measured every epoch: last (a^L) or all (per-layer report of each epoch).")
MEASURE_SAMPLES = flags.DEFINE_integer(
    "measure_samples", 512,
    "How many training samples the bundle metric measures (which: --measure_sample_source).",
    lower_bound=1)
MEASURE_SAMPLE_SOURCE = flags.DEFINE_enum(
    "measure_sample_source", "fixed", ["fixed", "augmented"],
    "fixed: the same training examples without augmentation at every measurement "
    "(reproducible); augmented: the first examples of the shuffled, augmented training "
    "batches, new at every measurement, as the reference measured.")
SHUFFLE_BUFFER = flags.DEFINE_integer(
    "shuffle_buffer", data.SHUFFLE_BUFFER,
    "Training examples in the shuffle buffer (the reference: 10 for mnist, 10000 for the "
    "others).", lower_bound=1)
KEEP_CHECKPOINTS = flags.DEFINE_integer(
    "keep_checkpoints", 2,
    "Checkpoints of the last epochs to keep: 2 = the newest plus one to fall back to if the "
    "newest is damaged. evaluate averages the test accuracy over the kept ones; keep 5 (4 "
    "with --accounting=reference) for it to recompute the reported test accuracy.",
    lower_bound=1)
ACCOUNTING = flags.DEFINE_enum(
    "accounting", "cb_keras", list(evaluation.ACCOUNTINGS),
    "How --epochs=E is trained and reported (docs/reproduction.md). cb_keras: train E "
    "epochs, test accuracy = mean of the last 5 on the whole test split. reference: the "
    "reference code's train.py/evaluate.py (commit 1a4c762): train E-1 epochs, test "
    "accuracy pooled over the last 4 without the test split's last partial batch; needs "
    "E >= 5 and --measure_every=1 (a^L at epoch 0 and after every epoch, whose mean is "
    "bundle_entropy_integral).")
EXPORT = flags.DEFINE_bool(
    "export", True, "Export each final network as SavedModel (export/); TensorFlow backend only "
    "(elsewhere the default is skipped with a note).")
PROGRESS = flags.DEFINE_enum(
    "progress", "line", ["line", "bar", "none"],
    "Per-epoch output: one compact line, Keras's progress bar, or nothing.")


@flags.validator(LEARNING_RATE.name)
def _learning_rate_fits_float32(value: float) -> bool:
    """The bundle metric's rule (finite and > 0 in float32), checked before any file is written."""
    try:
        bundles.check_learning_rate(value)
    except ValueError as error:
        raise flags.ValidationError(
            f"{error} E.g. 1e-3 (the papers' value).") from None
    return True


rundir.operational(DATA_DIR, KEEP_CHECKPOINTS, EXPORT, PROGRESS)


def training_config() -> TrainConfig:
    """The training configuration given by the flags above.

    Off TensorFlow the default --export is turned off with a one-line note
    (`serving.CAN_EXPORT`).

    Raises:
        app.UsageError: --accounting=reference with fewer than 5 epochs or
            with --measure_every other than 1; --export given off TensorFlow.
    """
    cfg = TrainConfig.from_flags({field.name: flags.FLAGS[field.name].value
                                  for field in dataclasses.fields(TrainConfig)})
    try:
        cfg.epoch_accounting.trained_epochs(cfg.epochs)
    except ValueError as error:
        raise app.UsageError(f"--accounting={cfg.accounting}: {error}") from error
    if cfg.epoch_accounting.skips_last_epoch and cfg.measure_every != 1:
        raise app.UsageError(
            f"--accounting={cfg.accounting} measures a^L at epoch 0 and after every epoch, "
            f"as the reference's evaluate.py did; drop --measure_every={cfg.measure_every}.")
    if cfg.export and not serving.CAN_EXPORT:
        if EXPORT.present:
            raise app.UsageError(f"--export: {serving.NO_EXPORT}; drop --export or use "
                                 "KERAS_BACKEND=tensorflow.")
        print(f"note: no SavedModel export: {serving.NO_EXPORT} (--noexport hides this note).",
              flush=True)
        cfg = dataclasses.replace(cfg, export=False)
    return cfg
