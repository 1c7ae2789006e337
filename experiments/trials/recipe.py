"""What a `TrainConfig` makes of a network: its optimizer, its data, its measurement sample.

The network itself is named and built by `cb_keras.paper.spec.NetworkSpec`.
The learning rate and batch size come from the one `TrainConfig` (its
``metric_step`` gives the bundle metric the same ones).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import keras

from cb_keras.autotune import trainer
from cb_keras.paper import data, optimizers
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


def compile_model(model: keras.Model, cfg: TrainConfig) -> None:
    """`cb_keras.autotune.trainer.compile_model` with the configured optimizer and learning rate."""
    trainer.compile_model(model, OPTIMIZERS[cfg.optimizer](cfg.learning_rate))


@dataclasses.dataclass(frozen=True)
class TrialData:
    """The data of a command's trainings, loaded once per command (`trial_data`).

    Attributes:
        config: the `TrainConfig` it was loaded for (data set, batch size,
            augmentation, shuffle buffer, measurement sample, accounting).
        test: the test batches (`cb_keras.paper.data.load`).
        info: the data set's `cb_keras.paper.data.DataInfo`.
        sample: ``sample(seed, epochs) -> (x, y)``, what a trial measures
            after `epochs` epochs (`measurement_sampler`).
    """

    config: TrainConfig
    test: Any
    info: data.DataInfo
    sample: data.Sampler

    def training_batches(self, shuffle_seed: int) -> Any:
        """The training batches of one epoch: shuffled and augmented (with
        ``config.augment``) as seeded by `shuffle_seed`."""
        return _load(self.config, augment=self.config.augment, shuffle_seed=shuffle_seed)[0]


def trial_data(cfg: TrainConfig) -> TrialData:
    """The test split, the data set's numbers and the measurement sampler of `cfg`.

    Raises:
        CommandError: settings the data set cannot serve: --batch_size or
            --measure_samples larger than the training split.
        DatasetNotPreparedError: a TFDS data set is not prepared.
    """
    _, test, info = _load(cfg, augment=False)
    if cfg.measure_samples > info.train_size:
        raise CommandError(
            f"--measure_samples={cfg.measure_samples} is more than the {cfg.dataset} training "
            f"split holds ({info.train_size} examples); lower it.")
    return TrialData(cfg, test, info, measurement_sampler(cfg))


def data_once(cfg: TrainConfig) -> Callable[[], TrialData]:
    """``load() -> TrialData``: `trial_data` on the first call, the same record on later
    ones. A command passes it as `experiments.runtime.command.execute`'s check (bad
    settings fail before a run directory is made) and its work reuses what it loaded."""
    return functools.cache(functools.partial(trial_data, cfg))


def _load(cfg: TrainConfig, *, augment: bool, shuffle_seed: int | None = None):
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


def measurement_sampler(cfg: TrainConfig) -> data.Sampler:
    """``sample(seed, epochs) -> (x, y)``: what the trial measures after `epochs` epochs.

    ``cfg.measure_sample_source == "fixed"``: always `cb_keras.paper.data.measurement_sample`
    (reproducible, no augmentation); ``"augmented"``: the first
    ``cfg.measure_samples`` examples of the shuffled, augmented training
    batches, drawn anew for every measurement and seeded by the trial's seed
    and the epoch, as the reference measured (`cb_keras.paper.data.sampler`).
    """
    return data.sampler(cfg.dataset, cfg.measure_samples,
                        augmented=cfg.measure_sample_source == "augmented",
                        batch_size=cfg.batch_size, data_dir=cfg.data_dir,
                        shuffle_buffer=cfg.shuffle_buffer)
