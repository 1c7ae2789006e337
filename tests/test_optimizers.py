"""RAdam and Lookahead: golden trajectories, hand-computed updates, saving, fit.

Backend-neutral except where marked: run under any KERAS_BACKEND.
"""

import keras
import numpy as np
import pytest

from cb_keras.paper import optimizers
from cb_keras._backend import optimizer_kernels

SCCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BACKEND = keras.backend.backend()
# Compiled: in a tf.function on TensorFlow, jax.jit on JAX. On PyTorch the
# updates run eagerly, as Keras's PyTorch trainer runs by default; compiling
# them with its torch.compile (jit_compile=True) took 90 s on a 2-core CPU,
# too slow for a unit test.
MODES = ["eager"] if BACKEND == "torch" else ["eager", "compiled"]
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="tests a TensorFlow-only feature (KERAS_BACKEND=tensorflow)")


def _stepper(optimizer, variables, compiled: bool):
    """``step(grads)``: `optimizer` applies `grads` to `variables`, eagerly or compiled.

    Compiled: in a ``tf.function`` on TensorFlow, with ``jax.jit`` of
    ``stateless_apply`` (as Keras's JAX trainer does) on JAX.
    """
    def apply(grads):
        optimizer.apply(grads, variables)

    if not compiled:
        return apply
    if BACKEND == "tensorflow":
        import tensorflow as tf
        return tf.function(apply)
    assert BACKEND == "jax", BACKEND
    import jax
    stateless = jax.jit(optimizer.stateless_apply)

    def apply_compiled(grads):
        new_variables, new_state = stateless([v.value for v in optimizer.variables], grads,
                                             [v.value for v in variables])
        for variable, value in zip(list(variables) + optimizer.variables,
                                   new_variables + new_state):
            variable.assign(value)

    return apply_compiled


def _case_optimizer(cases, i):
    inner = optimizers.RAdam(float(cases[f"{i}_lr"]), weight_decay=float(cases[f"{i}_wd"]))
    return optimizers.Lookahead(inner) if bool(cases[f"{i}_lookahead"]) else inner


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("i", range(4))
def test_golden_trajectories_match_every_step(optimizer_cases, i, mode):
    # TF-Addons 0.23's trajectories: it multiplies by 1/(1-b^t) where 0.8.3
    # (the reference's) divides, so they agree to rounding, not bit for bit.
    optimizer = _case_optimizer(optimizer_cases, i)
    w = keras.Variable(optimizer_cases[f"{i}_w0"])
    optimizer.build([w])
    step = _stepper(optimizer, [w], mode == "compiled")
    for t, (grad, expected) in enumerate(zip(optimizer_cases[f"{i}_grads"],
                                             optimizer_cases[f"{i}_traj"]), start=1):
        step([keras.ops.convert_to_tensor(grad)])
        np.testing.assert_allclose(
            np.asarray(w), expected, rtol=2e-6, atol=1e-9,
            err_msg=f"case {optimizer_cases['names'][i]}, step {t}")


def _tfa_083_trajectory(w0, grads, lr, wd, lookahead, order="0.8.3"):
    """TF-Addons 0.8.3's Lookahead(RectifiedAdam) in float32 NumPy, one rounding per operation.

    From tensorflow/addons v0.8.3, tensorflow_addons/optimizers/
    rectified_adam.py (``_resource_apply_dense``) and lookahead.py, epsilon
    1e-6, sync period 6, slow step size 0.5. ``order="0.23"``: multiply by
    the reciprocal of ``1 - b^t`` as 0.23 does, for contrast.

    The powers ``b^t`` are the backend's float32 ``pow`` (as the optimizer's):
    ``powf`` is not correctly rounded, and its last bit differs between
    libraries (glibc, Eigen, and NumPy's SIMD code on AVX-512 CPUs), which
    is not what this compares.
    """
    f = np.float32
    b1, b2, eps, lr, wd, alpha = f(0.9), f(0.999), f(1e-6), f(lr), f(wd), f(0.5)
    w = w0.astype(f)
    slow, m, v = w.copy(), np.zeros_like(w), np.zeros_like(w)
    trajectory = []
    for t, g in enumerate(grads, start=1):
        step = f(t)
        b1_power, b2_power = (f(keras.ops.convert_to_numpy(keras.ops.power(b, step)))
                              for b in (b1, b2))
        sma_inf = f(2.0) / (f(1.0) - b2) - f(1.0)
        if order == "0.8.3":
            sma_t = sma_inf - f(2.0) * step * b2_power / (f(1.0) - b2_power)
        else:
            sma_t = sma_inf - f(2.0) * step * b2_power * (f(1.0) / (f(1.0) - b2_power))
        m = b1 * m + (f(1.0) - b1) * g
        v = b2 * v + (f(1.0) - b2) * np.square(g)
        if order == "0.8.3":
            m_corr, v_corr = m / (f(1.0) - b1_power), np.sqrt(v / (f(1.0) - b2_power))
        else:
            m_corr = m * (f(1.0) / (f(1.0) - b1_power))
            v_corr = np.sqrt(v * (f(1.0) / (f(1.0) - b2_power)))
        if sma_t >= f(5.0):
            r_t = np.sqrt((sma_t - f(4.0)) / (sma_inf - f(4.0)) * (sma_t - f(2.0))
                          / (sma_inf - f(2.0)) * sma_inf / sma_t)
            var_t = r_t * m_corr / (v_corr + eps)
        else:
            var_t = m_corr
        if wd > 0:
            var_t = var_t + wd * w
        w = w - lr * var_t
        if lookahead and t % 6 == 0:
            slow = slow + alpha * (w - slow)
            w = slow.copy()
        trajectory.append(w)
    return np.array(trajectory)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lr, wd, lookahead", [
    (1e-3, 1e-2, True), (5e-2, 1e-2, True), (5e-2, 1e-2, False), (2e-2, 0.0, True)],
    ids=["paper", "big_lr", "radam_only", "no_wd"])
def test_trajectories_equal_tf_addons_0_8_3_bit_for_bit(lr, wd, lookahead, mode):
    rng = np.random.default_rng(4)
    shape = (64, 33)
    w0 = rng.normal(size=shape).astype(np.float32)
    grads = (rng.normal(size=(40,) + shape)
             * 10.0 ** rng.uniform(-6, 0, size=(40,) + shape)).astype(np.float32)
    inner = optimizers.RAdam(lr, weight_decay=wd)
    optimizer = optimizers.Lookahead(inner) if lookahead else inner
    w = keras.Variable(w0)
    optimizer.build([w])
    step = _stepper(optimizer, [w], mode == "compiled")
    expected = _tfa_083_trajectory(w0, grads, lr, wd, lookahead)
    for t, (grad, weights) in enumerate(zip(grads, expected), start=1):
        step([keras.ops.convert_to_tensor(grad)])
        np.testing.assert_array_equal(np.asarray(w), weights, err_msg=f"step {t}")
    # The 0.23 order rounds differently: the test tells the two apart.
    assert not np.array_equal(_tfa_083_trajectory(w0, grads, lr, wd, lookahead, "0.23"),
                              expected)


def _reference_trajectory(w0, grads, lr, wd, sync_period, alpha, threshold=5.0):
    """docs/method.md §3 written out in float64 NumPy: RAdam in Lookahead."""
    b1, b2, eps = 0.9, 0.999, 1e-6
    w, slow = w0.astype(np.float64), w0.astype(np.float64)
    m, v = np.zeros_like(w), np.zeros_like(w)
    rho_inf = 2 / (1 - b2) - 1
    trajectory = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**t), np.sqrt(v / (1 - b2**t))
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho_t >= threshold:
            r_t = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                          / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            step = r_t * m_hat / (v_hat + eps)
        else:
            step = m_hat
        w = w - lr * (step + wd * w)
        if t % sync_period == 0:
            slow = slow + alpha * (w - slow)
            w = slow.copy()
        trajectory.append(w)
    return np.array(trajectory)


def test_matches_hand_computed_update_with_other_lookahead_settings():
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(5,)).astype(np.float32)
    grads = rng.normal(size=(13, 5)).astype(np.float32)
    optimizer = optimizers.Lookahead(optimizers.RAdam(0.1, weight_decay=0.05),
                                     sync_period=4, slow_step_size=0.8)
    w = keras.Variable(w0)
    got = []
    for g in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g), w)])
        got.append(np.array(w))
    expected = _reference_trajectory(w0, grads, 0.1, 0.05, sync_period=4, alpha=0.8)
    np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)
    # Step 5 has rho_t = 4.996: not rectified with the threshold 5, rectified with 4.
    wrong = _reference_trajectory(w0, grads, 0.1, 0.05, 4, 0.8, threshold=4.0)
    assert not np.allclose(got[4], wrong[4], rtol=1e-5, atol=1e-6)


def test_exclude_from_weight_decay_keeps_excluded_variables():
    optimizer = optimizers.RAdam(0.1, weight_decay=0.5)
    kernel, bias = keras.Variable(np.ones(3, "float32"), name="kernel"), \
        keras.Variable(np.ones(3, "float32"), name="bias")
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    zero = keras.ops.zeros(3)
    optimizer.apply_gradients([(zero, kernel), (zero, bias)])
    np.testing.assert_allclose(np.asarray(kernel), 1 - 0.1 * 0.5)
    np.testing.assert_array_equal(np.asarray(bias), 1.0)


def test_lookahead_delegates_learning_rate_to_inner_optimizer():
    optimizer = optimizers.paper_optimizer(learning_rate=2e-3)
    assert isinstance(optimizer.inner_optimizer, optimizers.RAdam)
    assert float(optimizer.learning_rate) == pytest.approx(2e-3)
    optimizer.learning_rate = 5e-4
    assert float(optimizer.inner_optimizer.learning_rate) == pytest.approx(5e-4)


def test_paper_optimizer_settings():
    optimizer = optimizers.paper_optimizer()
    inner = optimizer.inner_optimizer
    assert (optimizer.sync_period, optimizer.slow_step_size) == (6, 0.5)
    assert (inner.epsilon, inner.weight_decay, inner.beta_1, inner.beta_2) == \
        (1e-6, 1e-2, 0.9, 0.999)
    assert float(inner.learning_rate) == pytest.approx(1e-3)


def test_config_round_trip_through_keras_serialization():
    optimizer = optimizers.Lookahead(optimizers.RAdam(0.01, epsilon=1e-5, weight_decay=0.0),
                                     sync_period=3, slow_step_size=0.25, name="la")
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, optimizers.Lookahead)
    assert isinstance(restored.inner_optimizer, optimizers.RAdam)
    assert restored.get_config() == optimizer.get_config()


@pytest.mark.parametrize("kwargs, error", [
    ({"sync_period": 0}, ValueError), ({"sync_period": 2.5}, ValueError),
    ({"slow_step_size": 0.0}, ValueError), ({"slow_step_size": 1.5}, ValueError)])
def test_lookahead_rejects_bad_settings(kwargs, error):
    with pytest.raises(error):
        optimizers.Lookahead(optimizers.RAdam(), **kwargs)


def test_lookahead_rejects_non_optimizers_and_gradient_accumulation():
    with pytest.raises(TypeError, match="Keras 3 optimizer"):
        optimizers.Lookahead("radam")
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        optimizers.Lookahead(optimizers.RAdam(gradient_accumulation_steps=2))


@pytest.mark.parametrize("kwargs", [{"beta_1": 1.0}, {"beta_2": -0.1}, {"epsilon": 0.0},
                                    {"weight_decay": -1.0}])
def test_radam_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        optimizers.RAdam(**kwargs)


def _tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int32)


def _tiny_model(weights=None):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2)])
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=optimizers.paper_optimizer(0.05), loss=SCCE, metrics=["accuracy"])
    return model


def _assert_same_arrays(a, b, **tolerance):
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), **tolerance)


def test_save_and_load_round_trip_keeps_optimizer_state(tmp_path):
    x, y = _tiny_data()
    model = _tiny_model()
    model.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0)  # 8 steps: one sync
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer, optimizers.Lookahead)
    assert int(restored.optimizer.iterations) == 8
    _assert_same_arrays(restored.optimizer.variables, model.optimizer.variables, rtol=0, atol=0)
    # Training on continues identically, so slow weights and moments came back.
    for m in (model, restored):
        m.fit(x, y, batch_size=12, epochs=1, shuffle=False, verbose=0)
    _assert_same_arrays(restored.get_weights(), model.get_weights(), rtol=0, atol=0)


@tensorflow_only
def test_fit_under_mirrored_strategy_matches_single_device(mirrored_strategy):
    x, y = _tiny_data()
    single = _tiny_model()
    initial = single.get_weights()
    strategy = mirrored_strategy
    with strategy.scope():
        mirrored = _tiny_model(initial)
    for model in (single, mirrored):
        model.fit(x, y, batch_size=12, epochs=2, shuffle=False, verbose=0)
    _assert_same_arrays(mirrored.get_weights(), single.get_weights(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(single.get_weights()[0], initial[0])
    for variable in mirrored.optimizer.variables:  # every replica holds the same state
        first, second = strategy.experimental_local_results(variable.value)
        np.testing.assert_array_equal(first.numpy(), second.numpy(), err_msg=variable.path)


def test_fit_with_mixed_precision():
    x, y = _tiny_data()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _tiny_model()
        history = model.fit(x, y, batch_size=12, epochs=2, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, optimizers.Lookahead)
    assert int(model.optimizer.iterations) == 16
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def _conditionals_in_step(optimizer, num_variables: int) -> int:
    """Number of conditional ops in the traced graph of one `apply` on that many variables."""
    import tensorflow as tf
    variables = [keras.Variable(np.ones(3, "float32")) for _ in range(num_variables)]
    optimizer.build(variables)
    step = tf.function(lambda grads: optimizer.apply(grads, variables))
    graph = step.get_concrete_function([tf.TensorSpec((3,))] * num_variables).graph
    return sum(op.type in ("If", "StatelessIf") for op in graph.get_operations())


@tensorflow_only
@pytest.mark.parametrize("make, expected", [
    (optimizers.RAdam, 0), (optimizers.paper_optimizer, 2)], ids=["radam", "lookahead"])
def test_step_has_a_fixed_number_of_conditionals_whatever_the_variables(make, expected):
    # Per-variable conditionals made the train step of a 50-layer network
    # twice as slow to trace as Keras's AdamW: the rectification is a select,
    # Lookahead's start and synchronisation one conditional each per step.
    assert _conditionals_in_step(make(), 1) == expected
    assert _conditionals_in_step(make(), 12) == expected


def _kernel_inputs(rectify: bool):
    """Weights, moments and gradients over many magnitudes, and one step's scalars (float32)."""
    rng = np.random.default_rng(1)
    shape = (257, 129)

    def spread(scale_low, scale_high):
        return (rng.normal(size=shape)
                * 10.0 ** rng.uniform(scale_low, scale_high, size=shape)).astype(np.float32)

    arrays = {"gradient": spread(-7, 0), "m": spread(-7, -1), "v": np.abs(spread(-12, -2)),
              "variable": spread(-3, 0)}
    scalars = {name: np.float32(value) for name, value in {
        "beta_1": 0.9, "one_minus_beta_1": 1 - np.float32(0.9), "beta_2": 0.999,
        "one_minus_beta_2": 1 - np.float32(0.999), "bias_1": 0.653,
        "bias_2": 0.024, "rectifier": 0.37 if rectify else np.nan, "epsilon": 1e-6,
        "weight_decay": 1e-2, "lr": 1e-3}.items()}
    scalars["rectify"] = np.bool_(rectify)
    return arrays, scalars


def _radam_step_in_numpy(a: dict, c: dict, decay: bool):
    """One RAdam step with every float32 operation rounded on its own (no fused multiply-add)."""
    m = c["beta_1"] * a["m"] + c["one_minus_beta_1"] * a["gradient"]
    v = c["beta_2"] * a["v"] + c["one_minus_beta_2"] * np.square(a["gradient"])
    m_hat = m / c["bias_1"]
    if c["rectify"]:
        update = c["rectifier"] * m_hat / (np.sqrt(v / c["bias_2"]) + c["epsilon"])
    else:
        update = m_hat
    if decay:
        update = update + c["weight_decay"] * a["variable"]
    return m, v, a["variable"] - c["lr"] * update


@pytest.mark.parametrize("decay", [True, False], ids=["decay", "no-decay"])
@pytest.mark.parametrize("rectify", [True, False], ids=["rectified", "unrectified"])
def test_fused_updates_round_every_operation_like_separate_kernels(rectify, decay):
    # The updates are compiled with XLA into one pass; XLA would turn a
    # multiply followed by an add into a fused multiply-add (one rounding
    # instead of two) and leave the reference's trajectories. Bit equality
    # with float32 NumPy, which rounds every operation, checks that it does not.
    arrays, scalars = _kernel_inputs(rectify)
    tensor = keras.ops.convert_to_tensor
    c = {name: tensor(value) for name, value in scalars.items()}
    # As in a train step, the zero comes from the step counter: to the
    # compiled kernel it is a run-time argument.
    c["zero"] = optimizer_kernels.zero_of(tensor(np.int64(7)))
    m, v, variable = optimizer_kernels.radam_step(
        *(tensor(arrays[k]) for k in ("gradient", "m", "v", "variable")), c, decay)
    slow = optimizer_kernels.lookahead_step(tensor(arrays["variable"]), tensor(arrays["m"]),
                                            tensor(np.float32(0.5)), c["zero"])
    for got, expected in zip((m, v, variable), _radam_step_in_numpy(arrays, scalars, decay)):
        np.testing.assert_array_equal(np.asarray(got), expected)
    np.testing.assert_array_equal(
        np.asarray(slow), arrays["m"] + np.float32(0.5) * (arrays["variable"] - arrays["m"]))
