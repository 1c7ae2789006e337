"""Test accuracy as the papers report it: the mean over the last epochs of training.

Two accountings turn ``epochs`` (the number a user asks for) into trained
epochs and a reported test accuracy (`ACCOUNTINGS`; docs/reproduction.md,
"Epochs and the reported accuracy"):

- ``"cb_keras"`` (the default): ``epochs`` epochs are trained and the test
  accuracy is the mean over the last `LAST_EPOCHS` (5) of them, each on the
  whole test split.
- ``"reference"``: what the reference's train.py and evaluate.py did (GitHub
  ``peerdavid/conflicting-bundles``, commit 1a4c762): ``epochs - 1`` epochs
  are trained (its checkpoint e holds the weights after e epochs, and the
  last checkpoint is not trained further), and the test accuracy is pooled
  over the checkpoints with ``e > epochs - 5``, i.e. the last 4 trained
  epochs, on the test split without its last partial batch.

`TestEvaluation` evaluates the test split during ``fit`` and adds
``test_loss`` and ``test_accuracy`` to the logs of the epochs it tests: every
`every` epochs and each of the last ones (`in_last_epochs`), whose mean is the
reported test accuracy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

LAST_EPOCHS = 5  # the reported test accuracy is the mean over the last 5 epochs


@dataclasses.dataclass(frozen=True)
class Accounting:
    """How a number of epochs becomes trained epochs and a reported test accuracy.

    Attributes:
        name: ``"cb_keras"`` or ``"reference"`` (key of `ACCOUNTINGS`).
        skips_last_epoch: the last of the asked-for epochs is not trained
            (the reference saved checkpoint e, then trained epoch e, except the last).
        last_epochs: the reported test accuracy is the mean over this many last
            trained epochs.
        drop_test_remainder: the test split is evaluated without its last
            partial batch.
    """

    name: str
    skips_last_epoch: bool
    last_epochs: int
    drop_test_remainder: bool

    def trained_epochs(self, epochs: int) -> int:
        """Epochs trained when `epochs` are asked for.

        Raises:
            ValueError: the reference accounting with fewer than 5 epochs, whose
                average would include the untrained network's checkpoint.
        """
        if self.skips_last_epoch and epochs <= self.last_epochs:
            raise ValueError(
                f"the {self.name} accounting trains epochs - 1 and averages the test accuracy "
                f"over the last {self.last_epochs} of them; epochs={epochs} would average "
                f"the untrained network too. Ask for at least {self.last_epochs + 1} epochs.")
        return epochs - 1 if self.skips_last_epoch else epochs


ACCOUNTINGS = {accounting.name: accounting for accounting in (
    Accounting("cb_keras", skips_last_epoch=False, last_epochs=LAST_EPOCHS,
               drop_test_remainder=False),
    Accounting("reference", skips_last_epoch=True, last_epochs=LAST_EPOCHS - 1,
               drop_test_remainder=True),
)}


def accounting(name: str) -> Accounting:
    """The accounting called `name`; ValueError naming the choices otherwise."""
    if name not in ACCOUNTINGS:
        raise ValueError(f"accounting must be one of {list(ACCOUNTINGS)}, got {name!r}.")
    return ACCOUNTINGS[name]


def in_last_epochs(epoch: int, epochs: int, last: int = LAST_EPOCHS) -> bool:
    """Is epoch number `epoch` (counted from 1) among the last `last` of `epochs` trained?"""
    return epoch > epochs - last


class TestEvaluation(keras.callbacks.Callback):
    """Adds ``test_loss`` and ``test_accuracy`` to the logs of some epochs.

    Tests every `every` epochs and in each of the last `last` epochs (their
    mean is the reported test accuracy, see `last_accuracies`). Place it
    before callbacks that read the test numbers.

    Args:
        test: the test split, e.g. a batched `tf.data.Dataset` of (x, y).
        every: test every k epochs; None: only in the last epochs.
        epochs: the total number of epochs trained.
        last: how many last epochs are averaged (`Accounting.last_epochs`).

    Attributes:
        last_accuracies: the test accuracies of the last `last` epochs
            tested so far in this object's life.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, test: Any, every: int | None, epochs: int, last: int = LAST_EPOCHS):
        super().__init__()
        self.test, self.every, self.epochs, self.last = test, every, epochs, last
        self.last_accuracies: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        last = in_last_epochs(done, self.epochs, self.last)
        if logs is not None and (last or (self.every and done % self.every == 0)):
            values = self.model.evaluate(self.test, verbose=0, return_dict=True)
            logs["test_loss"] = values["loss"]
            logs["test_accuracy"] = values["accuracy"]
            if last:
                self.last_accuracies.append(values["accuracy"])
