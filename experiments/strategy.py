"""Where training and bundle measurement run: the tf.distribute strategy of --strategy.

- ``none``: TensorFlow's default strategy (one device: the first GPU, or the CPU).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the GPUs of this machine,
  or over the devices named by ``--devices``.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over several
  machines, configured by the ``TF_CONFIG`` environment variable. Start the
  same command on every worker with the same ``--run_dir`` on a shared file
  system; only the chief (task ``chief``, or ``worker`` 0 when there is no
  chief) writes files, the others read the checkpoints to resume.

``--batch_size`` is always the global batch size (split across replicas), so
the bundle metric's batch size is the same under every strategy. The flags
are in `experiments.options.strategy`; this module takes their record.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import app, logging

from experiments.config import StrategyConfig


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
    next seed of --runs, or a test after another) then fails with "Shape
    mismatch in the collective instance".
    """
    devices = devices or tuple(d.name for d in tf.config.list_logical_devices("GPU"))
    if not devices or all("cpu" in d.lower() for d in devices):
        return tf.distribute.ReductionToOneDevice()
    return None


def make(cfg: StrategyConfig) -> tf.distribute.Strategy:
    """The strategy chosen by --strategy (and --devices)."""
    if cfg.name == "mirrored":
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


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the one worker that writes the run directory."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    if task_type == "worker":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        return resolver.task_id == 0 and "chief" not in cluster
    return False
