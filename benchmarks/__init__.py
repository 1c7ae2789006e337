"""Benchmarks: ``python -m benchmarks.bench_*``; each states its goal as a ratio of one run.

They run with the commands' TensorFlow process defaults (experiments/__init__.py)
(on TensorFlow; `bench_backends` also runs on JAX and PyTorch).
"""

import os

import experiments

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    experiments.configure_tensorflow()
