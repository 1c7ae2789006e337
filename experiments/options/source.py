"""--source_run, --latency_repeats: the trained network of lesion and prune, and its timing."""

from __future__ import annotations

from absl import flags

from experiments.runtime import rundir

SOURCE_RUN = flags.DEFINE_string(
    "source_run", None,
    "Directory of a finished `train` run of a resnet (e.g. runs/train_resnet-...), or of "
    "one of its trials (runs/<name>/seed<k>/ when it trained several seeds).")
LATENCY_REPEATS = flags.DEFINE_integer(
    "latency_repeats", 50, "Timed inference calls per network; the median is reported.",
    lower_bound=1)
rundir.operational(LATENCY_REPEATS)
