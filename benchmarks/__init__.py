"""Benchmarks: ``python -m benchmarks.bench_*``; each states its goal as a ratio of one run.

They run with the commands' TensorFlow process defaults (experiments/__init__.py).
"""

import experiments

experiments.configure_tensorflow()
