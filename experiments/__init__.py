"""Experiments of the conflicting-bundles papers: ``python -m experiments COMMAND``.

Importing this package sets TensorFlow's process defaults for the commands,
the benchmarks and the tests; it imports nothing else, so it runs before
TensorFlow is imported. A variable already set in the environment wins.

- ``TF_CPP_MIN_LOG_LEVEL=2``: TensorFlow's C++ INFO and WARNING lines
  (oneDNN, CUDA probing, XLA) print before absl's logging is set up; 0
  shows them.
- ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow uses its oneDNN CPU kernels by
  default only on CPUs with AVX-512 VNNI/BF16 or AMX. Elsewhere (e.g. an
  AVX2-only AMD EPYC) its own kernels made a training step of the main
  job's 50-layer network 3.4x slower (README, Speed). oneDNN rounds
  differently from those kernels (other summation orders), so set 0 to
  compare with runs made without it.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
