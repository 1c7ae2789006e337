"""Trainers: what the search (`cb_keras.autotune`) calls to train one network.

A *trainer* (`Trainer`) is a callable that takes a `TrainRequest` (which
network, how many epochs, the search's callbacks, and the learning rate and
batch size the search measures with) and returns a `TrainOutcome`. The
search itself has no training loop. `fit_trainer` is a plain in-memory
trainer; the ``python -m experiments auto_tune`` command passes a resumable
one.

The learning rate and batch size travel once, in the request: the trainer
trains with them and the search's metric measures with them, so the two
cannot disagree (`fit_trainer` refuses training batches of another size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from cb_keras.inputs import dataset_batch_size
from cb_keras.paper import optimizers
from cb_keras.paper.spec import NetworkSpec
from cb_keras.paper.evaluation import TestEvaluation
from cb_keras.report import ConflictReport


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """One attempt of the search: the training it asks a trainer for.

    Attributes:
        attempt: index of the attempt, 0 for the starting network.
        kind: ``"vgg"`` or ``"resnet"``; blocks: blocks per stage.
        epochs: epochs to train (the attempt may stop earlier on a restart).
        seed: seed of the network's initialisation.
        learning_rate: the learning rate to train with (the metric measures
            with it too).
        batch_size: the training batch size (the metric measures with it too).
        callbacks: Keras callbacks to pass to ``fit`` (the `ConflictCheck`),
            before any callback that commits or reports the epoch.
        before_training: None, or a function the trainer calls once with
            the untrained network and the numbers it measured at
            initialization (a dict, may be empty) before the first epoch of
            an attempt it starts from scratch; True means: do not train (a
            restart was decided), return 0 completed epochs.
        restart_report: returns, once the attempt stopped for a restart,
            the `cb_keras.report.ConflictReport` of every layer that the
            check decided it on (the network as it stopped, on the attempt's
            measurement sample after the restart's epochs), else None. A
            trainer that records the network's conflicts at the end can
            use it instead of measuring every layer again.
    """

    attempt: int
    kind: str
    blocks: tuple[int, ...]
    epochs: int
    seed: int
    learning_rate: float
    batch_size: int
    callbacks: tuple[keras.callbacks.Callback, ...]
    before_training: Callable[[keras.Model, dict[str, Any]], bool] | None = None
    restart_report: Callable[[], ConflictReport | None] = lambda: None

    @property
    def network(self) -> NetworkSpec:
        """The network to train: `kind` with `blocks`."""
        return NetworkSpec(self.kind, self.blocks)


@dataclasses.dataclass(frozen=True)
class TrainOutcome:
    """What a trainer returns for one attempt.

    Attributes:
        completed_epochs: epochs the attempt trained (fewer than asked on a restart).
        test_accuracy: mean test accuracy over its last 5 epochs, or None.
        summary: JSON-able numbers of the attempt (stored with it), at least
            ``parameters``, its network's parameter count (the search reports
            attempt 0's as the start network's, without building it again).
        load_model: returns the trained network (called for the last attempt only).
    """

    completed_epochs: int
    test_accuracy: float | None
    summary: dict[str, Any]
    load_model: Callable[[], keras.Model]


Trainer = Callable[[TrainRequest], TrainOutcome]


def compile_model(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    """Compile with `optimizer`, the papers' loss (on logits) and accuracy, ready to fit.

    Also creates the optimizer's and the metrics' variables now: ``fit``
    (without a distribution strategy) would create them inside the first
    trace of the train step, and TensorFlow would then trace the whole step
    a second time, which costs as much as the first for a deep network.
    """
    model.compile(optimizer=optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    model.compute_metrics(None, np.zeros(1, "int32"),
                          np.zeros((1,) + tuple(model.output_shape[1:]), "float32"))
    model.reset_metrics()


def fit_trainer(train: Any, test: Any, *, input_shape: Sequence[int], num_classes: int,
                verbose: int = 1) -> Trainer:
    """A plain in-memory trainer: ``model.fit`` with the papers' optimizer and loss.

    Args:
        train: training data for ``fit``: a ``tf.data.Dataset`` of (images,
            labels) batches of a static size, e.g. from `cb_keras.paper.data.load`
            (batched with ``drop_remainder=True``); it must be the request's
            batch size.
        test: test data for ``evaluate``, evaluated after each of the last 5
            epochs of an attempt.
        input_shape: ``(H, W, C)`` of one image; num_classes: C.
        verbose: 1 prints one line per epoch, 0 nothing.

    Returns:
        A `Trainer` that trains with ``Lookahead(RAdam)`` at the request's
        learning rate. It keeps nothing on disk: a killed search restarts its
        current attempt from epoch 0 (the experiments command resumes per epoch).
        It raises ValueError when `train`'s batch size is not the request's.
    """
    def trainer(request: TrainRequest) -> TrainOutcome:
        if dataset_batch_size(train) != request.batch_size:
            raise ValueError(
                f"the training batches hold {dataset_batch_size(train)} examples but the "
                f"search measures with batch_size={request.batch_size}; load the data "
                "with that batch size (cb_keras.paper.data.load(name, batch_size=...)), "
                "batched with drop_remainder=True.")
        keras.utils.set_random_seed(request.seed)
        model = request.network.build(input_shape, num_classes)
        compile_model(model, optimizers.paper_optimizer(request.learning_rate))
        if request.before_training is not None and request.before_training(model, {}):
            return TrainOutcome(0, None, {"parameters": int(model.count_params())},
                                lambda: model)
        tests = TestEvaluation(test, None, request.epochs)
        lines = [keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(
            _epoch_line(request, epoch, logs), flush=True))] if verbose else []
        history = model.fit(train, epochs=request.epochs, verbose=0,
                            callbacks=[*request.callbacks, tests, *lines])
        accuracy = float(np.mean(tests.last_accuracies)) if tests.last_accuracies else None
        return TrainOutcome(len(history.epoch), accuracy,
                            {"parameters": int(model.count_params())}, lambda: model)
    return trainer


def _epoch_line(request: TrainRequest, epoch: int, logs: dict[str, Any]) -> str:
    """``[attempt 1 vgg-3-6-3-3] epoch 2/20  loss ..  acc ..  test_acc ..  H(a^L) ..``."""
    keys = (("loss", "loss"), ("accuracy", "acc"), ("test_accuracy", "test_acc"),
            ("check_bundle_entropy", "H(a^L)"))
    parts = [f"{label} {logs[key]:.4f}" for key, label in keys
             if key in logs and np.isfinite(logs[key])]
    return f"[attempt {request.attempt} {request.network.label}] " \
           f"epoch {epoch + 1}/{request.epochs}  " + "  ".join(parts)
