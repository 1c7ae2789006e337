"""The element-wise updates of `cb_keras.paper.optimizers`, compiled for the running Keras backend.

The updates are element-wise chains of a dozen operations over every weight.
Run as separate kernels, each one reads and writes the whole tensor, which
costs most on networks with many weights and small images, such as the main
job's (docs/performance.md, the papers' optimizer). Compiled with XLA
(``tf.function(jit_compile=True)`` on TensorFlow, ``jax.jit`` on JAX), each
update is one pass over memory.

XLA's code generator would also contract a multiply followed by an add into
one fused multiply-add, which rounds once instead of twice and so leaves the
reference's trajectories. `_rounded` prevents that: it passes a product
through an integer XOR with a zero the compiler cannot see (it comes from
the step counter at run time), so every product is rounded to the
variable's dtype before it is added, exactly as TF-Addons' separate
TensorFlow kernels did; `quotient` keeps XLA from turning a division by a
constant or a scalar into a multiplication by its reciprocal. tests/test_optimizers.py
checks the result bit for bit against float32 NumPy on the CPU. (On GPUs,
XLA's float32 division is not correctly rounded, so there the updates agree
with it to about one unit in the last place.)

PyTorch's float32 square root is not correctly rounded on the CPU, so there
`sqrt` is `cb_keras._backend.torch_kernels.sqrt`, which is.

`update_if` is the one other part that differs by backend: Lookahead's
conditional update of all weights, which on TensorFlow goes through
``tf.distribute`` (for ``MirroredStrategy``) and one ``tf.cond``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import ops

_BACKEND = keras.backend.backend()
if _BACKEND == "tensorflow":
    import tensorflow as tf
elif _BACKEND == "jax":
    import jax
if _BACKEND == "torch":  # its float32 square root is not correctly rounded
    from cb_keras._backend.torch_kernels import sqrt
else:
    sqrt = ops.sqrt
_INTEGER_OF_WIDTH = {2: "int16", 4: "int32", 8: "int64"}
_WIDTH = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def _compiled(function: Callable, static: tuple[str, ...] = ()) -> Callable:
    """`function` compiled into one XLA computation on TensorFlow and JAX."""
    if _BACKEND == "tensorflow":
        return tf.function(function, jit_compile=True, reduce_retracing=True)
    if _BACKEND == "jax":
        return jax.jit(function, static_argnames=static)
    return function  # eager kernels round every operation anyway


def _rounded(x, zero):
    """`x`, unchanged, behind an operation no compiler folds into a fused multiply-add."""
    integer = _integer_like(x)
    bits = ops.bitwise_xor(_bitcast(x, integer), ops.cast(zero, integer))
    return _bitcast(bits, x.dtype)


def quotient(x, divisor, zero):
    """``x / divisor`` (`divisor` a scalar or of `x`'s shape), rounded as one IEEE division.

    XLA rewrites a division by a constant, and JAX's XLA also a division by
    a broadcast scalar, into a multiplication by the reciprocal, which rounds
    differently in about a quarter of the values. Each element's divisor
    here passes through an integer XOR with a run-time zero that depends on
    that element, so it is neither a constant nor a broadcast to the
    compiler.
    """
    x = ops.convert_to_tensor(x, dtype=ops.convert_to_tensor(divisor).dtype)
    integer = _integer_like(x)
    per_element_zero = ops.bitwise_and(_bitcast(x, integer), ops.cast(zero, integer))
    divisors = ops.bitwise_xor(per_element_zero, _bitcast(divisor, integer))  # x's shape
    return x / _bitcast(divisors, x.dtype)


def _bitcast(x, dtype):
    """`x`'s bits as `dtype` of the same width (Keras's TensorFlow `view` needs static shapes)."""
    if _BACKEND == "tensorflow":
        return tf.bitcast(x, dtype)
    return ops.view(x, dtype)


def _integer_like(x) -> str:
    """The integer dtype of the same width as the float dtype of `x`."""
    return _INTEGER_OF_WIDTH[_WIDTH[keras.backend.standardize_dtype(x.dtype)]]


def value_of(x):
    """The current value of `x` (a Keras or backend variable, or a tensor) as a tensor."""
    if _BACKEND == "tensorflow":  # Keras's convert_to_tensor returns a Keras variable as is
        return tf.convert_to_tensor(x)
    return ops.convert_to_tensor(x)


def zero_of(step):
    """0, computed at run time from the step counter (>= 0), so not a constant to XLA."""
    return ops.minimum(step, ops.zeros_like(step))


def _radam(gradient, m, v, variable, c: dict, decay: bool):
    """(m, v, variable) after one RAdam step; `c` holds `cb_keras.paper.optimizers.RAdam`'s step scalars.

    TF-Addons 0.8.3's order of operations: the bias corrections divide.
    """
    zero = c["zero"]
    m = _rounded(c["beta_1"] * m, zero) + _rounded(c["one_minus_beta_1"] * gradient, zero)
    v = (_rounded(c["beta_2"] * v, zero)
         + _rounded(c["one_minus_beta_2"] * ops.square(gradient), zero))
    m_hat = quotient(m, c["bias_1"], zero)
    v_hat = sqrt(quotient(v, c["bias_2"], zero))
    # A select, not a conditional: while rho_t < 5 the rectifier is NaN and
    # the select takes m_hat.
    update = ops.where(c["rectify"], c["rectifier"] * m_hat / (v_hat + c["epsilon"]), m_hat)
    if decay:
        update = update + _rounded(c["weight_decay"] * variable, zero)
    return m, v, variable - _rounded(c["lr"] * update, zero)


def _lookahead(variable, slow, alpha, zero):
    """slow + alpha * (variable - slow)."""
    return slow + _rounded(alpha * (variable - slow), zero)


radam_step = _compiled(_radam, static=("decay",))
lookahead_step = _compiled(_lookahead)


def update_if(condition, pairs: Sequence[tuple], update: Callable, distribution=None) -> None:
    """If `condition`: ``(w, slow) = update(w, slow)`` for every pair of variables.

    Args:
        condition: a boolean scalar tensor (the same on every replica).
        pairs: ``(variable, slow)`` pairs of Keras variables.
        update: maps the two current values to the two new ones.
        distribution: the optimizer's ``tf.distribute`` strategy (TensorFlow only):
            the updates then run on every device, in one cross-replica
            merge call and one ``tf.cond`` for all variables (per-variable
            conditionals made tracing a deep network's train step several
            times slower).
    """
    if _BACKEND == "tensorflow":
        _update_if_tf(condition, pairs, update, distribution)
        return
    current = [(variable.value, slow.value) for variable, slow in pairs]
    new = ops.cond(condition, lambda: [update(w, s) for w, s in current], lambda: current)
    for (variable, slow), (w, s) in zip(pairs, new):
        variable.assign(w)
        slow.assign(s)


def _update_if_tf(condition, pairs, update, distribution) -> None:
    def assign(variable, slow):
        w, s = update(tf.convert_to_tensor(variable), tf.convert_to_tensor(slow))
        variable.assign(w)
        slow.assign(s)

    tf_pairs = [(variable.value, slow.value) for variable, slow in pairs]

    def update_all(distribution, tf_pairs, condition):
        def updates():
            for variable, slow in tf_pairs:
                distribution.extended.update(variable, assign, args=(slow,), group=False)

        # In a merge call the condition arrives once per replica; all agree.
        tf.cond(distribution.experimental_local_results(condition)[0], updates, lambda: None)

    tf.__internal__.distribute.interim.maybe_merge_call(
        update_all, distribution, tf_pairs, condition)
