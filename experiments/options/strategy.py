"""--strategy, --devices: where training and bundle measurement run (see `experiments.runtime.strategy`)."""

from __future__ import annotations

from absl import flags

from experiments.runtime import rundir
from experiments.runtime.config import StrategyConfig

STRATEGY = flags.DEFINE_enum(
    "strategy", "none", ["none", "mirrored", "multi_worker"],
    "Where training and measurement run: none (one device), mirrored (the GPUs of this "
    "machine, or --devices; on JAX keras.distribution.DataParallel), multi_worker (several "
    "machines, TF_CONFIG; TensorFlow only).")
DEVICES = flags.DEFINE_list(
    "devices", [],
    "Devices for --strategy=mirrored, e.g. /gpu:0,/gpu:1 or /cpu:0,/cpu:1 (logical CPUs). "
    "Default: all GPUs of the machine (the CPU if there is none).")
rundir.operational(STRATEGY, DEVICES)


@flags.multi_flags_validator(
    [STRATEGY.name, DEVICES.name],
    message="--devices is only used with --strategy=mirrored; drop it or add "
            "--strategy=mirrored.")
def _devices_need_mirrored(values: dict) -> bool:
    return not values[DEVICES.name] or values[STRATEGY.name] == "mirrored"


def strategy_config() -> StrategyConfig:
    """The strategy given by the flags above."""
    return StrategyConfig(STRATEGY.value, tuple(DEVICES.value))
