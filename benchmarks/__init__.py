"""Benchmarks: ``python -m benchmarks.bench_*``; each states its goal as a ratio of one run."""

import experiments  # noqa: F401  TensorFlow's process defaults, set before it is imported
