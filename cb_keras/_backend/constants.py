"""The numbers of the method that every backend's kernels share (docs/method.md §1, §2)."""

import math

FINGERPRINT_HASHES = 4  # K: fingerprints per sample
ENTROPY_EPSILON = 1e-5  # inside the bundle entropy's log
BRANCH_SCALE_EPSILON = 1e-6  # inside the residual branch scale's square root
MAX_WEIGHT_BITS = 24  # of the float64 fingerprints' hash weights (TensorFlow, PyTorch)


def weight_bits(features: int) -> int:
    """Bits k of the float64 hash weights so that every sum stays below 2^53 (exact).

    A fingerprint of D features sums 2D terms, each a 16-bit half times a
    weight below 2^k: ``k = min(24, 37 - ceil(log2(2D)))``.
    """
    return min(MAX_WEIGHT_BITS, 53 - 16 - math.ceil(math.log2(2 * features)))
