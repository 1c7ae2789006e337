"""What a `TrainConfig` and a network spec make: the network, its optimizer, its data.

A *spec* names a network completely: ``{"model": "fnn", "depth": 5, "width": 50}``
or ``{"model": "vgg" | "resnet", "blocks": [3, 6, 12, 3]}`` (see
`experiments.options.model`). The learning rate and batch size come from the
one `TrainConfig` (its ``metric_step`` gives the bundle metric the same ones).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import keras

from cb_keras.autotune import trainer
from cb_keras.paper import data, models, optimizers
from experiments.runtime import strategy
from experiments.runtime.config import TrainConfig
from experiments.runtime.console import CommandError

# --optimizer: name -> the optimizer of that learning rate.
OPTIMIZERS: dict[str, Callable[[float], keras.optimizers.Optimizer]] = {
    "paper": optimizers.paper_optimizer,
    "radam": optimizers.RAdam,
    "adam": keras.optimizers.Adam,
    "sgd": keras.optimizers.SGD,
}


def spec_name(spec: dict[str, Any]) -> str:
    """`cb_keras.paper.models.spec_label` of a network spec, e.g. ``fnn-d5-w50`` or ``vgg-1-1-1-1``."""
    return models.spec_label(spec["model"], spec.get("blocks"), depth=spec.get("depth"),
                             width=spec.get("width"))


def build_model(spec: dict[str, Any], input_shape: Sequence[int],
                num_classes: int) -> keras.Model:
    """The (uncompiled) network described by `spec` (module docstring)."""
    return models.build(spec["model"], input_shape, num_classes,
                        **{k: v for k, v in spec.items() if k != "model"})


def compile_model(model: keras.Model, cfg: TrainConfig) -> None:
    """`cb_keras.autotune.trainer.compile_model` with the configured optimizer and learning rate."""
    trainer.compile_model(model, OPTIMIZERS[cfg.optimizer](cfg.learning_rate))


def load_data(cfg: TrainConfig, *, augment: bool, shuffle_seed: int | None = None):
    """``(train, test, info)`` of the configured data set (`cb_keras.paper.data.load`).

    Raises:
        CommandError: the flags do not fit the data set (e.g. --batch_size
            larger than the training split) or the placement
            (`experiments.runtime.strategy.check_batches`).
    """
    drop_test_remainder = cfg.epoch_accounting.drop_test_remainder
    try:
        loaded = data.load(cfg.dataset, batch_size=cfg.batch_size, augment=augment,
                           data_dir=cfg.data_dir, shuffle_seed=shuffle_seed,
                           shuffle_buffer=cfg.shuffle_buffer,
                           drop_test_remainder=drop_test_remainder)
    except ValueError as error:
        raise CommandError(str(error)) from error
    test_size = loaded[2].test_size
    strategy.check_batches(cfg.batch_size, 0 if drop_test_remainder else test_size % cfg.batch_size)
    return loaded


def check_data(cfg: TrainConfig) -> None:
    """Refuse settings the data set cannot serve, before a run directory is made.

    Raises:
        CommandError: --batch_size or --measure_samples larger than the
            training split.
        DatasetNotPreparedError: a TFDS data set is not prepared.
    """
    _, _, info = load_data(cfg, augment=False)
    if cfg.measure_samples > info.train_size:
        raise CommandError(
            f"--measure_samples={cfg.measure_samples} is more than the {cfg.dataset} training "
            f"split holds ({info.train_size} examples); lower it.")


def measurement_sampler(cfg: TrainConfig) -> data.Sampler:
    """``sample(seed, epochs) -> (x, y)``: what the trial measures after `epochs` epochs.

    ``cfg.measure_sample == "fixed"``: always `cb_keras.paper.data.measurement_sample`
    (reproducible, no augmentation); ``"augmented"``: the first
    ``cfg.measure_samples`` examples of the shuffled, augmented training
    batches, drawn anew for every measurement and seeded by the trial's seed
    and the epoch, as the reference measured (`cb_keras.paper.data.sampler`).
    """
    return data.sampler(cfg.dataset, cfg.measure_samples,
                        augmented=cfg.measure_sample == "augmented",
                        batch_size=cfg.batch_size, data_dir=cfg.data_dir,
                        shuffle_buffer=cfg.shuffle_buffer)
