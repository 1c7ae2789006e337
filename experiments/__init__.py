"""Experiments of the conflicting-bundles papers: ``python -m experiments COMMAND``.

Importing this package sets TensorFlow's process defaults for the commands,
the benchmarks and the tests; it imports nothing else, so it runs before
TensorFlow is imported. A variable already set in the environment wins.
On other Keras backends nothing reads them (docs/experiments.md, On JAX).

- ``TF_CPP_MIN_LOG_LEVEL=2``: TensorFlow's C++ INFO and WARNING lines
  (oneDNN, CUDA probing, XLA) print before absl's logging is set up; 0
  shows them.
- ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow uses its oneDNN CPU kernels by
  default only on CPUs with AVX-512 VNNI/BF16 or AMX. Elsewhere (e.g. an
  AVX2-only AMD EPYC) its own kernels make a training step of the main
  job's 50-layer network several times slower (docs/performance.md,
  bench_kernels). oneDNN rounds differently from those kernels (other
  summation orders), so set 0 to compare with runs made without it.
- ``CB_KERAS_GRAPPLER=0``: `configure_tensorflow` switches off Grappler,
  TensorFlow's graph optimiser, for the commands and benchmarks (not for
  the tests of the library, which run TensorFlow's defaults). It makes the
  first train step of a new network (building and optimising its graph)
  cheaper, with later steps within the noise of repeated runs
  (docs/performance.md, bench_kernels); the results differ from Grappler's
  fused kernels in rounding only. 1 turns it back on.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("CB_KERAS_GRAPPLER", "0")


def configure_tensorflow() -> None:
    """Apply the defaults above that need TensorFlow: call before any tf.function runs.

    Imports TensorFlow: ``python -m experiments`` calls it on the TensorFlow
    backend only.

    Exits with a one-line message when ``CB_KERAS_GRAPPLER`` is not 0 or 1.
    """
    grappler = os.environ["CB_KERAS_GRAPPLER"]
    if grappler not in ("0", "1"):
        raise SystemExit(f"CB_KERAS_GRAPPLER must be 0 (Grappler off, the default) or 1 (on), "
                         f"got {grappler!r}; unset it or set one of those.")
    import tensorflow as tf

    if grappler == "0":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
