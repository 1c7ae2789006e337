"""The kernels of `cb_keras.bundles`, taps and `measure` on PyTorch (eager).

Every kernel runs eagerly under ``torch.no_grad()``, one ATen operation at a
time, as Keras's own PyTorch trainer does by default. Each operation writes
its float32 result to memory, so the transform ``t = w_max - ((a * lr) *
(1 / bs))`` rounds exactly as the reference's separate float32 operations:
nothing contracts a multiply and a subtract into a fused multiply-add, and
nothing reassociates the two multiplies. (ATen's subtraction computes
``w + (-1) * x``, exact for the factor -1, so it rounds once, like a plain
subtraction.) ``torch.compile`` would fuse the chain into generated C++ or
Triton code, whose compiler may contract it; it is not used: measuring runs
once per epoch on a few thousand samples, where its compile time per shape
(seconds to minutes) would outweigh what it saves.

The fingerprint is the TensorFlow kernels' (`cb_keras._backend.constants.weight_bits`):
the float32 bit pattern of a row split into 2D 16-bit halves h, and
``sum_d h_d * r_d`` for each of 4 sets of fixed pseudo-random integer
weights ``r_d`` in ``[0, 2^k)``, held in float64 so that every partial sum
is an integer below ``2^53``: the BLAS matrix product is exact in any
summation order, on the CPU and on CUDA (which has no integer matrix
product). One fingerprint collides with probability at most ``2^-k`` per
pair of distinct rows, all four with at most ``2^-4k`` (<= 2^-64).

Tensors stay on the device of their inputs (Keras's default device for
NumPy inputs: CUDA when available).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import torch

from cb_keras._backend.constants import (BRANCH_SCALE_EPSILON, ENTROPY_EPSILON,
                                         FINGERPRINT_HASHES, weight_bits)

_HASH_SEED = 20201104
_EXPONENT_MASK = 0x7F800000  # all exponent bits set: inf or NaN


def constants(weight_amplitude, learning_rate, inverse_batch_size) -> tuple:
    """The float32 scalars of the transform as tensors on Keras's device."""
    return tuple(keras.ops.convert_to_tensor(np.float32(value), "float32")
                 for value in (weight_amplitude, learning_rate, inverse_batch_size))


def _float32(x, device: torch.device) -> torch.Tensor:
    """`x` (a tensor or array-like) as a float32 tensor on `device`, cast with IEEE rounding."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=torch.float32)
    with np.errstate(over="ignore"):  # beyond float32: inf, reported as an overflow
        array = np.asarray(x).astype(np.float32)
    return torch.from_numpy(array).to(device)


@torch.no_grad()
def transform(activations, weight_amplitude, learning_rate, inverse_batch_size) -> torch.Tensor:
    """``t = w_max - ((a * lr) * (1 / bs))`` in float32, flattened to (N, D)."""
    a = _float32(activations, weight_amplitude.device)
    a = a.reshape(a.shape[0], -1)
    return weight_amplitude - ((a * learning_rate) * inverse_batch_size)


@torch.no_grad()
def fingerprint(activations, weight_amplitude, learning_rate, inverse_batch_size,
                features: int) -> torch.Tensor:
    """(N, 4) int64 fingerprints of `transform`'s rows, >= 0 (-1 rows: NaN or inf)."""
    t = transform(activations, weight_amplitude, learning_rate, inverse_batch_size)
    bits = t.view(torch.int32)
    weights = _hash_weights(features, bits.device)
    low = (bits & 0xFFFF).to(torch.float64)
    high = ((bits >> 16) & 0xFFFF).to(torch.float64)
    sums = (low @ weights[0] + high @ weights[1]).to(torch.int64)
    finite = torch.all((bits & _EXPONENT_MASK) != _EXPONENT_MASK, dim=1, keepdim=True)
    return torch.where(finite, sums, -1)


@functools.cache
def _hash_weights(features: int, device: torch.device) -> torch.Tensor:
    """The fixed (2, D, 4) float64 integer weights in [0, 2^k) of the low and high halves."""
    weights = np.random.default_rng(_HASH_SEED).integers(
        0, 2**weight_bits(features), (2, features, FINGERPRINT_HASHES))
    return torch.from_numpy(weights.astype(np.float64)).to(device)


def diverged(fingerprints: torch.Tensor) -> torch.Tensor:
    """Boolean scalar: does any row of `fingerprints` come from NaN/inf?"""
    return torch.any(fingerprints < 0)


def all_finite(tensor) -> torch.Tensor:
    """Boolean scalar: no NaN or inf in `tensor` (True if not floating)."""
    tensor = keras.ops.convert_to_tensor(tensor)
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return torch.tensor(True, device=tensor.device)
    return torch.all(torch.isfinite(tensor))


def mark_diverged(fingerprints: torch.Tensor, inputs_finite: torch.Tensor) -> torch.Tensor:
    """`fingerprints` (N, K), every row set to -1 (diverged) unless `inputs_finite`."""
    return torch.where(inputs_finite, fingerprints, -1)


@torch.no_grad()
def bundle_stats(fingerprints: torch.Tensor, labels,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(num_bundles, bundle_entropy, max_accuracy)`` of (N, K) fingerprints."""
    unique_rows, bundle_of_sample = torch.unique(fingerprints, dim=0, return_inverse=True)
    labels = keras.ops.convert_to_tensor(labels).to(fingerprints.device, torch.int64)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).to(torch.float32)
    counts = torch.zeros(unique_rows.shape[0], num_classes, device=fingerprints.device)
    counts.index_add_(0, bundle_of_sample, one_hot)  # (B, C): samples of class c in bundle b
    sizes = torch.sum(counts, dim=1)
    fractions = counts / sizes[:, None]
    entropy = -torch.sum(fractions * torch.log(fractions + ENTROPY_EPSILON), dim=1)
    num_samples = fingerprints.shape[0]
    bundle_entropy = torch.sum(sizes * torch.clamp(entropy, min=0.0)) / num_samples
    max_accuracy = torch.sum(torch.amax(counts, dim=1)) / num_samples
    return (torch.tensor(unique_rows.shape[0], device=fingerprints.device), bundle_entropy,
            max_accuracy)


def layer_metrics(activations, labels, constants_: tuple, num_classes: int, features: int):
    """``(num_bundles, bundle_entropy, max_accuracy, diverged)`` of one layer."""
    fingerprints = fingerprint(activations, *constants_, features)
    return bundle_stats(fingerprints, labels, num_classes) + (diverged(fingerprints),)


@torch.no_grad()
def weight_amplitude(variables: list) -> torch.Tensor:
    """max |w| over `variables`, a float32 scalar."""
    return torch.max(torch.stack(
        [torch.max(torch.abs(keras.ops.convert_to_tensor(v).to(torch.float32)))
         for v in variables]))


def scaled_branch(branch, conv1, conv2) -> torch.Tensor:
    """The reference's residual branch ``(branch * s2) * s1`` in float32 (`cb_keras.taps`)."""
    return (branch.to(torch.float32) * _scale(conv2)) * _scale(conv1)


def _scale(x: torch.Tensor) -> torch.Tensor:
    """``1.0 / sqrt(var(x) + 1e-6)`` in float32 over all axes; NaN for an infinite variance.

    A division, not rsqrt (they round differently), of a correctly rounded `sqrt`.
    """
    variance = torch.var(x.to(torch.float32), correction=0)
    scale = 1.0 / sqrt(variance + BRANCH_SCALE_EPSILON)
    return torch.where(torch.isfinite(variance), scale, float("nan"))


def sqrt(x: torch.Tensor) -> torch.Tensor:
    """The square root of `x`, correctly rounded to `x`'s dtype as IEEE 754 requires.

    PyTorch's own float32 square root on the CPU is one unit in the last
    place off for about a sixth of the values (torch 2.13, MKL builds); this
    one is taken in float64 and rounded once to `x`'s float16, bfloat16 or
    float32, which gives the correctly rounded result (float64 holds more
    than twice their precision, so the double rounding is innocuous).
    """
    if x.dtype == torch.float64:
        return torch.sqrt(x)
    return torch.sqrt(x.to(torch.float64)).to(x.dtype)


def forward_function(probe, fingerprints_fn):
    """``run(x, *constants)``: the probe's forward pass (inference) and `fingerprints_fn`.

    Eager, reading the weights as they are at each call.
    """
    @torch.no_grad()
    def run(x, *constants_):
        return fingerprints_fn(probe(x, training=False), *constants_)
    return run


def stats_per_layer(fingerprints: torch.Tensor, labels,
                    num_classes: int) -> tuple[torch.Tensor, ...]:
    """(L, N, K) fingerprints -> (L,) num_bundles, bundle_entropy, max_accuracy, diverged."""
    per_layer = [bundle_stats(layer, labels, num_classes) + (diverged(layer),)
                 for layer in fingerprints]
    return tuple(torch.stack(values) for values in zip(*per_layer))
