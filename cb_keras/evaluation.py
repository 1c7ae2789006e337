"""Test accuracy as the papers report it: the mean over the last `LAST_EPOCHS` epochs.

`TestEvaluation` evaluates the test split during ``fit`` and adds
``test_loss`` and ``test_accuracy`` to the logs of the epochs it tests: every
`every` epochs and each of the last `LAST_EPOCHS` (`in_last_epochs`), whose
mean is the reported test accuracy.
"""

from __future__ import annotations

from typing import Any

import keras

LAST_EPOCHS = 5  # the reported test accuracy is the mean over the last 5 epochs


def in_last_epochs(epoch: int, epochs: int) -> bool:
    """Is epoch number `epoch` (counted from 1) among the last `LAST_EPOCHS` of `epochs`?"""
    return epoch > epochs - LAST_EPOCHS


class TestEvaluation(keras.callbacks.Callback):
    """Adds ``test_loss`` and ``test_accuracy`` to the logs of some epochs.

    Tests every `every` epochs and in each of the last `LAST_EPOCHS` epochs
    (their mean is the reported test accuracy, see `last_accuracies`). Place
    it before callbacks that read the test numbers.

    Args:
        test: the test split, e.g. a batched `tf.data.Dataset` of (x, y).
        every: test every k epochs; None: only in the last epochs.
        epochs: the total number of epochs of the training.

    Attributes:
        last_accuracies: the test accuracies of the last `LAST_EPOCHS`
            epochs tested so far in this object's life.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, test: Any, every: int | None, epochs: int):
        super().__init__()
        self.test, self.every, self.epochs = test, every, epochs
        self.last_accuracies: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        last = in_last_epochs(done, self.epochs)
        if logs is not None and (last or (self.every and done % self.every == 0)):
            values = self.model.evaluate(self.test, verbose=0, return_dict=True)
            logs["test_loss"] = values["loss"]
            logs["test_accuracy"] = values["accuracy"]
            if last:
                self.last_accuracies.append(values["accuracy"])
