"""The numbers of the method that every backend's kernels share (docs/method.md §1, §2)."""

FINGERPRINT_HASHES = 4  # K: fingerprints per sample
ENTROPY_EPSILON = 1e-5  # inside the bundle entropy's log
BRANCH_SCALE_EPSILON = 1e-6  # inside the residual branch scale's square root
