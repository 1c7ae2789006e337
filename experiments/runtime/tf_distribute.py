"""The tf.distribute strategies of --strategy on the TensorFlow backend.

`experiments.runtime.strategy` imports this module only when Keras runs on
TensorFlow; it describes the choices. ``none`` is TensorFlow's default
strategy, ``mirrored`` a ``MirroredStrategy``, ``multi_worker`` a
``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import app, logging

from experiments.runtime.config import StrategyConfig
from experiments.runtime.console import CommandError


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with a `reduce` that Keras 3's `fit` can use.

    With more than one worker, Keras 3.15's `fit` fails in two places
    (keras-team/keras#20585): it reduces a whole ``(x, y)`` batch at once
    (this strategy reduces single tensors only), and it reduces the scalar
    metric values of each replica along ``axis=0``. This `reduce` takes a nest
    of values, and reduces scalars across replicas only.
    """

    def reduce(self, reduce_op, value, axis):
        parent = super()

        def reduce_one(v):
            local = self.experimental_local_results(v)[0]
            return parent.reduce(reduce_op, v, None if local.shape.rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)


def _cross_device_ops(devices: tuple[str, ...]) -> tf.distribute.CrossDeviceOps | None:
    """ReductionToOneDevice for logical CPUs, TensorFlow's default (NCCL) for GPUs.

    On CPUs the default all-reduce uses collective ops whose instance keys
    restart with every new strategy; a second strategy in one process (the
    next seed of --seeds, or a test after another) then fails with "Shape
    mismatch in the collective instance".
    """
    devices = devices or tuple(d.name for d in tf.config.list_logical_devices("GPU"))
    if not devices or all("cpu" in d.lower() for d in devices):
        return tf.distribute.ReductionToOneDevice()
    return None


def make(cfg: StrategyConfig) -> tf.distribute.Strategy:
    """The strategy chosen by --strategy (and --devices).

    Raises:
        app.UsageError: --devices names a device this machine does not have.
        CommandError: TF_CONFIG is set but not a JSON object (TensorFlow reads
            it for every strategy).
    """
    _check_tf_config()
    if cfg.name == "mirrored":
        _check_devices(cfg.devices)
        try:
            return tf.distribute.MirroredStrategy(list(cfg.devices) or None,
                                                  cross_device_ops=_cross_device_ops(cfg.devices))
        except (ValueError, RuntimeError) as error:
            available = [d.name for d in tf.config.list_logical_devices()]
            raise app.UsageError(
                f"--devices={','.join(cfg.devices)} cannot be mirrored ({error}); "
                f"available devices: {', '.join(available)}.") from error
    if cfg.name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            logging.warning("--strategy=multi_worker without TF_CONFIG runs one local "
                            "worker; set TF_CONFIG on every machine (docs/experiments.md).")
        return _MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _check_tf_config() -> None:
    """Refuse a TF_CONFIG that is set but is not a JSON object."""
    text = os.environ.get("TF_CONFIG")
    if text is None:
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        value = error
    if not isinstance(value, dict):
        problem = value if isinstance(value, Exception) else "not a JSON object"
        raise CommandError(
            f"TF_CONFIG is set but is not a JSON object ({problem}): set it to "
            '{"cluster": {...}, "task": {"type": ..., "index": ...}} on every worker of a '
            "--strategy=multi_worker job, or unset it.")


def _check_devices(devices: tuple[str, ...]) -> None:
    """Refuse --devices that this machine does not have (e.g. /gpu:0 without a GPU)."""
    available = [d.name for d in tf.config.list_logical_devices()]
    missing = [d for d in devices if _canonical(d) not in map(_canonical, available)]
    if missing:
        raise app.UsageError(f"--devices={','.join(devices)}: this machine has no "
                             f"{', '.join(missing)}; its devices are {', '.join(available)}.")


def _canonical(name: str) -> str | None:
    """``"GPU:0"`` for "/gpu:0", "/device:GPU:0", ...; None for a name that is no device."""
    try:
        spec = tf.DeviceSpec.from_string(name)
    except ValueError:
        return None
    return f"{(spec.device_type or '').upper()}:{spec.device_index or 0}" \
        if spec.device_type else None
