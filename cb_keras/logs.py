"""Keeps TensorFlow's retracing warning about cb_keras's own functions off the log.

cb_keras traces its measurement functions once per network and per input
shape by design (a fingerprint needs the static number of features), and
TensorFlow counts the traces of one function across all networks, so
measuring a few networks, or `bundle_metrics` on a few shapes, makes it warn
"N out of the last M calls to ... triggered tf.function retracing". The
filter drops that warning when it names one of the functions below; the
warning about any other function still shows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

# Functions of cb_keras._backend.tf_kernels traced per network or shape.
EXPECTED_RETRACING = ("forward_function.<locals>.run", "_layer_metrics", "_hash_rows",
                      "stats_per_layer")


class ExpectedRetracing(logging.Filter):
    """Drops the "triggered tf.function retracing" warning of the functions `names`.

    Args:
        names: qualified names of Python functions, as the warning prints
            them; default `EXPECTED_RETRACING`.
    """

    def __init__(self, names: Sequence[str] = EXPECTED_RETRACING):
        super().__init__()
        self.names = tuple(names)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("triggered tf.function retracing" in message
                    and any(f" {name} " in message for name in self.names))


def quiet_expected_retracing(names: Sequence[str] = EXPECTED_RETRACING) -> None:
    """Install `ExpectedRetracing` of `names` on TensorFlow's logger (once per process)."""
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, ExpectedRetracing) and f.names == tuple(names)
               for f in logger.filters):
        logger.addFilter(ExpectedRetracing(names))
