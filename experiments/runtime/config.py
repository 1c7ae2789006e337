"""What a command is told to do, as frozen data: the flags' values, read once in `main`.

Flag-free: the flag modules under `experiments.options` fill these records
at the top of a command's `main`, and everything below `main` takes them as
arguments; a finished run's flags.json turns back into a `TrainConfig`
with `TrainConfig.from_flags`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cb_keras.paper import data, evaluation
from experiments.runtime.rundir import RunDirError


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a command's run directory is and what its flags.json records.

    Attributes:
        command: the command's name, first part of the default run name.
        flag_values: every key flag of the command, by name (flags.json).
        runs_root, name, run_dir: --runs_root, --name, --run_dir.
    """

    command: str
    flag_values: Mapping[str, Any]
    runs_root: str
    name: str | None
    run_dir: str | None


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    """--strategy (none, mirrored or multi_worker) and --devices (see `experiments.runtime.strategy`)."""

    name: str
    devices: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train and measure one network (the training flags as data).

    ``learning_rate`` and ``batch_size`` are held here once: the optimizer
    (`experiments.trials.recipe.compile_model`), the data batches
    (`experiments.trials.recipe.trial_data`) and the bundle metric (`metric_step`)
    all take them from this record.
    """

    dataset: str
    data_dir: str | None
    augment: bool
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    seed: int
    seeds: int  # trainings per network, seeds seed, seed + 1, ...
    test_every: int
    measure_every: int
    measure_layers: str  # "last" or "all"
    measure_samples: int
    keep_checkpoints: int
    export: bool
    progress: str  # "line", "bar" or "none"
    shuffle_buffer: int = data.SHUFFLE_BUFFER  # runs made before this flag used the default
    measure_sample_source: str = "fixed"  # or "augmented" (see recipe.measurement_sampler)
    accounting: str = "cb_keras"  # or "reference" (cb_keras.paper.evaluation.ACCOUNTINGS)

    @property
    def metric_step(self) -> dict[str, Any]:
        """``learning_rate`` and ``batch_size`` of a training step: the bundle metric's lr, bs."""
        return {"learning_rate": self.learning_rate, "batch_size": self.batch_size}

    @property
    def epoch_accounting(self) -> evaluation.Accounting:
        """How ``epochs`` becomes trained epochs and the reported test accuracy."""
        return evaluation.accounting(self.accounting)

    @property
    def trained_epochs(self) -> int:
        """Epochs a trial trains: ``epochs``, or ``epochs - 1`` with the reference accounting."""
        return self.epoch_accounting.trained_epochs(self.epochs)

    def with_trained_epochs(self, trained: int) -> "TrainConfig":
        """This config with ``epochs`` set so that it trains `trained` epochs."""
        return dataclasses.replace(
            self, epochs=trained + int(self.epoch_accounting.skips_last_epoch))

    @classmethod
    def from_flags(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """The config of a run from its flags.json (fields with a default may be absent)."""
        fields = dataclasses.fields(cls)
        names = [field.name for field in fields if field.name in values]
        missing = [field.name for field in fields
                   if field.name not in values and field.default is dataclasses.MISSING]
        if missing:
            raise RunDirError(
                f"flags.json lacks the training flags {missing}: the run was not made "
                "by a training command (train, fnn_map, ...).")
        return cls(**{name: values[name] for name in names})
