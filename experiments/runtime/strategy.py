"""Where training and bundle measurement run: the placement of --strategy.

On TensorFlow (`experiments.runtime.tf_distribute`) a ``tf.distribute``
strategy:

- ``none``: TensorFlow's default strategy (one device: the first GPU, or the CPU).
- ``mirrored``: ``tf.distribute.MirroredStrategy`` over the GPUs of this machine,
  or over the devices named by ``--devices``.
- ``multi_worker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over several
  machines, configured by the ``TF_CONFIG`` environment variable. Start the
  same command on every worker with the same ``--run_dir`` on a shared file
  system; only the chief (task ``chief``, or ``worker`` 0 when there is no
  chief) writes files, the others read the checkpoints to resume.

On JAX a Keras distribution (docs/experiments.md, On JAX):

- ``none``: one device (JAX's default: the first GPU, or the CPU).
- ``mirrored``: ``keras.distribution.DataParallel`` over the devices of this
  machine (all GPUs, else all CPUs; ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
  makes N logical CPUs), or over those named by ``--devices``. Every batch is
  split across them, so --batch_size must be a multiple of their number.
- ``multi_worker``: refused (one-line error); it needs TensorFlow.

``--batch_size`` is always the global batch size (split across replicas), so
the bundle metric's batch size is the same under every strategy. The flags
are in `experiments.options.strategy`; this module takes their record.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import ContextManager, Protocol

import keras
from absl import app

from cb_keras import _backend
from experiments.runtime.config import StrategyConfig
from experiments.runtime.console import CommandError


class Placement(Protocol):
    """A ``tf.distribute.Strategy``, a ``keras.distribution.Distribution`` or `OneDevice`.

    Networks are built and compiled inside ``placement.scope()``; the
    command's whole work runs inside `active` (placement).
    """

    def scope(self) -> ContextManager:
        """The context in which networks are built on the placement's devices."""


class OneDevice:
    """JAX's default placement (--strategy=none): no distribution, one device."""

    def scope(self) -> ContextManager:
        return contextlib.nullcontext()


def make(cfg: StrategyConfig) -> Placement:
    """The placement chosen by --strategy (and --devices) on the running backend.

    Raises:
        app.UsageError: --devices names a device this machine does not have,
            or --strategy=multi_worker off TensorFlow.
        CommandError: TF_CONFIG is set but not a JSON object (TensorFlow reads
            it for every strategy).
    """
    if _backend.NAME == "tensorflow":
        from experiments.runtime import tf_distribute  # imports TensorFlow
        return tf_distribute.make(cfg)
    if cfg.name == "multi_worker":
        raise app.UsageError(
            f"--strategy=multi_worker needs TensorFlow's MultiWorkerMirroredStrategy; Keras "
            f"runs on {_backend.NAME!r}. Use --strategy=mirrored (the devices of this machine) "
            "or KERAS_BACKEND=tensorflow.")
    if cfg.name == "mirrored":
        return keras.distribution.DataParallel(devices=_keras_devices(cfg.devices))
    return OneDevice()


def active(placement: Placement) -> ContextManager:
    """The context a command's work runs in.

    A Keras distribution is read by every `fit`, `evaluate` and `predict`
    call (to split the batches), not kept by the model, so on JAX the whole
    work runs in its scope. A tf.distribute strategy is kept by the
    variables made in its scope, so on TensorFlow this is no context.
    """
    if _backend.NAME == "tensorflow":
        return contextlib.nullcontext()
    return placement.scope()


def check_batches(batch_size: int, last_test_batch: int) -> None:
    """Refuse batches that the active Keras distribution cannot split evenly.

    JAX's DataParallel splits every batch of `fit`, `evaluate` and
    `predict` across its devices, and cannot split a batch whose size is
    not a multiple of their number (tf.distribute can); that includes the
    test split's last batch, of `last_test_batch` examples (0: none).

    Raises:
        CommandError: --batch_size or the last test batch is not a multiple
            of the number of devices.
    """
    distribution = None if _backend.NAME == "tensorflow" else keras.distribution.distribution()
    if distribution is None:
        return
    devices = distribution.device_mesh.devices.size
    if batch_size % devices or last_test_batch % devices:
        raise CommandError(
            f"--strategy=mirrored splits every batch across {devices} devices, so --batch_size "
            f"and the test split's last batch must be multiples of {devices}; --batch_size="
            f"{batch_size} leaves batches of {batch_size} and {last_test_batch}. Pick another "
            "--batch_size or other --devices.")


def _keras_devices(names: tuple[str, ...]) -> list[str] | None:
    """Keras's names (``"gpu:0"``) of --devices, or None (all devices) without them.

    Raises:
        app.UsageError: a name that is not ``[/][device:]TYPE:INDEX``, or a
            device this machine does not have.
    """
    if not names:
        return None
    # the default devices (GPUs where there are) and the CPUs, which every machine has
    available = list(dict.fromkeys(keras.distribution.list_devices()
                                   + keras.distribution.list_devices("cpu")))
    wanted = [_keras_name(name) for name in names]
    missing = [name for name, device in zip(names, wanted) if device not in available]
    if missing:
        raise app.UsageError(f"--devices={','.join(names)}: this machine has no "
                             f"{', '.join(missing)}; its devices are {', '.join(available)}.")
    return wanted


def _keras_name(name: str) -> str | None:
    """``"gpu:0"`` for "/gpu:0", "/device:GPU:0", "GPU:0"; None for a name that is no device."""
    match = re.fullmatch(r"/?(?:device:)?([a-z]+):(\d+)", name.strip(), re.IGNORECASE)
    return f"{match.group(1).lower()}:{int(match.group(2))}" if match else None


def is_chief(placement: Placement) -> bool:
    """True on the one worker that writes the run directory."""
    resolver = getattr(placement, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type or task_type == "chief":
        return True
    if task_type == "worker":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        return resolver.task_id == 0 and "chief" not in cluster
    return False
