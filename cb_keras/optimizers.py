"""The papers' optimizer for Keras 3: `RAdam` wrapped in `Lookahead` (docs/method.md §3).

Keras 3 ships neither optimizer, and TF-Addons (which the reference used)
does not work with Keras 3. Both classes here reproduce TF-Addons 0.23
``Lookahead(RectifiedAdam(...))`` step by step in float32, including the
order of the floating-point operations, so that the golden trajectories of
``tests/data/optimizer_cases.npz`` match to the last bit or so. The
element-wise update of each variable is compiled with XLA into one pass over
its memory, with every operation rounded as a separate TensorFlow kernel
rounds it (no fused multiply-add), so the results are those of the
unfused operations bit for bit; this needs TensorFlow with XLA, as the
standard Linux, macOS and Windows wheels are.

Both are ordinary Keras optimizers: they work in ``model.fit`` (also under
``tf.distribute.MirroredStrategy`` and mixed precision, where Keras wraps
them in a ``LossScaleOptimizer``) and save and load with the model, state
included (``model.save("x.keras")`` / ``keras.models.load_model``).
`Lookahead` uses ``tf.distribute`` directly and therefore needs the
TensorFlow backend, as the rest of cb_keras does.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

PAPER_LEARNING_RATE = 1e-3
RECTIFICATION_THRESHOLD = 5.0


@keras.saving.register_keras_serializable(package="cb_keras")
class RAdam(keras.optimizers.Optimizer):
    """Rectified Adam with decoupled weight decay, as TF-Addons' RectifiedAdam.

    For each variable w with gradient g at step t = 1, 2, ... (all in the
    variable's dtype):

        m = b1*m + (1-b1)*g              v = b2*v + (1-b2)*g*g
        m_hat = m / (1-b1^t)             v_hat = sqrt(v / (1-b2^t))
        rho_inf = 2/(1-b2) - 1           rho_t = rho_inf - 2*t*b2^t / (1-b2^t)
        step = r_t * m_hat / (v_hat + epsilon)  if rho_t >= 5  else m_hat
        w = w - lr * (step + weight_decay * w)

    with ``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``.
    The weight decay is applied inside the step (not before it, as Keras's
    base optimizer does) so that float32 rounding matches the reference;
    ``exclude_from_weight_decay`` works as for any Keras optimizer.

    Args:
        learning_rate: float, schedule or callable; default 1e-3.
        beta_1: decay of the first moment; default 0.9.
        beta_2: decay of the second moment; default 0.999.
        epsilon: added to ``v_hat``; default 1e-6 (the papers' value).
        weight_decay: decoupled weight decay factor; default 1e-2 (the
            papers' value). ``None`` or 0 turns it off.
        **kwargs: the other arguments of ``keras.optimizers.Optimizer``
            (``name``, ``clipnorm``, ``use_ema``, ...).

    Example:
        >>> model.compile(optimizer=RAdam(1e-3),
        ...               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(self, learning_rate=PAPER_LEARNING_RATE, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-6,
                 weight_decay: float | None = 1e-2, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        for name, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {value!r}.")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}.")
        if weight_decay is not None and weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0 or None, got {weight_decay!r}.")
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon

    def build(self, var_list):
        """Create the first and second moments, one pair per variable."""
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"])
        # Decide weight decay per variable now, on the Keras variables: the
        # cache is keyed like the per-device variables `update_step` sees.
        for variable in var_list:
            self._use_weight_decay(variable)

    def _apply_weight_decay(self, variables):
        """No-op: `update_step` applies the decay in the reference's order."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Update every variable; the step's scalars are built once per dtype and device.

        A deep network has hundreds of variables, and building the ~20 scalar
        operations of `_step_scalars` for each of them made tracing and graph
        optimisation of the train step slow. The values are the same either
        way (the same operations on the same inputs).
        """
        self._scalars_of_step = {}
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._scalars_of_step = None

    def _step_scalars(self, dtype, device: str, learning_rate) -> dict:
        """The scalars of this step in `dtype` (see the class docstring), cached per step."""
        cache = getattr(self, "_scalars_of_step", None)
        if cache is not None and (dtype, device) in cache:
            return cache[(dtype, device)]
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(beta_1, step)
        beta_2_power = ops.power(beta_2, step)
        inverse_bias_2 = 1.0 / (1.0 - beta_2_power)
        rho_inf = 2.0 / (1.0 - beta_2) - 1.0
        rho_t = rho_inf - 2.0 * step * beta_2_power * inverse_bias_2
        scalars = {
            "lr": ops.cast(learning_rate, dtype),
            "beta_1": beta_1, "one_minus_beta_1": 1.0 - beta_1,
            "beta_2": beta_2, "one_minus_beta_2": 1.0 - beta_2,
            "inverse_bias_1": 1.0 / (1.0 - beta_1_power),
            "inverse_bias_2": inverse_bias_2,
            "rectify": rho_t >= RECTIFICATION_THRESHOLD,
            "rectifier": ops.sqrt(
                (rho_t - 4.0) / (rho_inf - 4.0) * (rho_t - 2.0) / (rho_inf - 2.0)
                * rho_inf / rho_t),
            "epsilon": ops.cast(self.epsilon, dtype),
            "weight_decay": ops.cast(self.weight_decay or 0.0, dtype),
            "iterations": tf.convert_to_tensor(self.iterations),  # for `_zero_of`
        }
        if cache is not None:
            cache[(dtype, device)] = scalars
        return scalars

    def update_step(self, gradient, variable, learning_rate):
        """One RAdam step of one variable (see the class docstring), in one fused pass."""
        c = self._step_scalars(variable.dtype, variable.device, learning_rate)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        decay = bool(self.weight_decay and self._use_weight_decay(variable))
        tensor = tf.convert_to_tensor
        m_new, v_new, w_new = _radam_kernel(
            tf.cast(tensor(gradient), variable.dtype), tensor(m), tensor(v), tensor(variable),
            c, decay)
        self.assign(m, m_new)
        self.assign(v, v_new)
        self.assign(variable, w_new)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="cb_keras")
class Lookahead(keras.optimizers.Optimizer):
    """Lookahead (Zhang et al. 2019) around any Keras optimizer, as TF-Addons'.

    The wrapped ("fast") optimizer updates the weights w at every step. The
    wrapper keeps slow weights, set to w before the first step; after every
    ``sync_period``-th step (``iterations % sync_period == 0``):

        slow = slow + slow_step_size * (w - slow);   w = slow

    Learning rate and loss scale are those of the wrapped optimizer (reading
    or setting ``learning_rate`` reads or sets the inner one), so learning
    rate callbacks and ``LossScaleOptimizer`` work unchanged.

    Args:
        optimizer: the Keras optimizer to wrap (e.g. `RAdam`); it must not
            use ``gradient_accumulation_steps``.
        sync_period: k, the number of fast steps between synchronisations;
            default 6 (the papers' value).
        slow_step_size: alpha in (0, 1]; default 0.5 (the papers' value).
        name: optimizer name; default "lookahead".

    Example:
        >>> optimizer = Lookahead(RAdam(1e-3))      # == paper_optimizer()
        >>> model.compile(optimizer=optimizer, loss=..., metrics=["accuracy"])
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, sync_period: int = 6,
                 slow_step_size: float = 0.5, name: str | None = None):
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "Lookahead wraps a Keras 3 optimizer instance such as "
                f"cb_keras.optimizers.RAdam(), got {optimizer!r}.")
        if optimizer.gradient_accumulation_steps:
            raise ValueError(
                "Lookahead does not support an inner optimizer with "
                "gradient_accumulation_steps (its slow weights would sync on "
                "micro-steps); accumulate gradients outside the optimizer.")
        if isinstance(sync_period, bool) or not isinstance(sync_period, int) or sync_period < 1:
            raise ValueError(f"sync_period must be a positive integer, got {sync_period!r}.")
        if not 0.0 < slow_step_size <= 1.0:
            raise ValueError(f"slow_step_size must lie in (0, 1], got {slow_step_size!r}.")
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.sync_period = sync_period
        self.slow_step_size = slow_step_size

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def loss_scale_factor(self):
        return self.inner_optimizer.loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        # The base constructor sets None before the inner optimizer exists.
        if hasattr(self, "inner_optimizer"):
            self.inner_optimizer.loss_scale_factor = value

    @property
    def variables(self) -> list:
        """Own variables (iterations, slow weights), then the inner optimizer's."""
        return self._variables + self.inner_optimizer.variables

    def build(self, var_list):
        """Create one slow weight per variable and build the inner optimizer."""
        if self.built:
            return
        self._slow_weights = self.add_optimizer_variables(var_list, "slow")
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        """Fast step by the inner optimizer, then synchronise every k steps."""
        if len(grads) == 0:
            return
        if not self.built:
            if trainable_variables is None:
                raise ValueError(
                    "Lookahead is not built: pass trainable_variables on the "
                    "first call or call optimizer.build(model.trainable_variables).")
            with keras.name_scope(self.name, caller=self):
                self.build(list(trainable_variables))
        variables = list(trainable_variables or self._trainable_variables)
        self._update_slow_weights(variables, _start_slow_weights,
                                  ops.equal(self._iterations, 0))
        self.inner_optimizer.apply(grads, trainable_variables)
        self._update_slow_weights(
            variables, self._synchronize,
            ops.equal((self._iterations + 1) % self.sync_period, 0))
        self._iterations.assign_add(1)

    def _update_slow_weights(self, variables, update_fn, condition) -> None:
        """If `condition`: ``update_fn(var, slow)`` for every variable, on every device.

        One conditional around all variables' updates, not one per variable:
        per-variable conditionals made tracing and graph optimisation of a
        deep network's train step several times slower.
        """
        pairs = [(_tf_variable(v), self._slow_weights[self._get_variable_index(v)].value)
                 for v in variables]

        def update_all(distribution, pairs, condition):
            def updates():
                for variable, slow in pairs:
                    distribution.extended.update(variable, update_fn, args=(slow,),
                                                 group=False)

            # In a merge call the condition arrives once per replica; all agree.
            tf.cond(distribution.experimental_local_results(condition)[0], updates,
                    lambda: None)

        tf.__internal__.distribute.interim.maybe_merge_call(
            update_all, self._distribution_strategy, pairs, condition)

    def _synchronize(self, variable, slow):
        """slow += alpha * (w - slow); w = slow (TF-Addons' order), in one fused pass."""
        target = _lookahead_kernel(tf.convert_to_tensor(variable), tf.convert_to_tensor(slow),
                                   tf.cast(self.slow_step_size, variable.dtype),
                                   tf.convert_to_tensor(self._iterations))
        slow.assign(target)
        variable.assign(target)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "sync_period": self.sync_period,
            "slow_step_size": self.slow_step_size,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "Lookahead":
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects)
        return cls(optimizer, **config)


def _start_slow_weights(variable, slow):
    """Before the first step: slow = w."""
    slow.assign(variable)


def _tf_variable(variable):
    """The backing tf.Variable (possibly distributed) of a Keras variable."""
    return variable.value if isinstance(variable, keras.Variable) else variable


# The updates are element-wise chains of a dozen operations over every weight.
# Run as separate TensorFlow kernels, each one reads and writes the whole
# tensor, which made the papers' optimizer 1.2x slower per training step
# than Keras's AdamW on the main job's 50-layer network (many weights, small
# images). Compiled with XLA, each update is one pass over memory.
#
# XLA's code generator would also contract a multiply followed by an add into
# one fused multiply-add, which rounds once instead of twice and so leaves the
# reference's trajectories. `_rounded` prevents that: it passes a product
# through an integer XOR with a zero the compiler cannot see (it comes from
# the step counter at run time), so every product is rounded to the
# variable's dtype before it is added, exactly as separate kernels do.
# tests/test_optimizers.py checks the result bit for bit against float32
# NumPy.

_INTEGER_OF_WIDTH = {2: tf.int16, 4: tf.int32, 8: tf.int64}


def _rounded(x: tf.Tensor, zero: tf.Tensor) -> tf.Tensor:
    """`x`, unchanged, behind an operation no compiler folds into a fused multiply-add."""
    integer = _INTEGER_OF_WIDTH[x.dtype.size]
    bits = tf.bitwise.bitwise_xor(tf.bitcast(x, integer), tf.cast(zero, integer))
    return tf.bitcast(bits, x.dtype)


def _zero_of(step: tf.Tensor) -> tf.Tensor:
    """0, computed at run time from the step counter (>= 0), so not a constant to XLA."""
    return tf.minimum(step, tf.zeros_like(step))


@tf.function(jit_compile=True, reduce_retracing=True)
def _radam_kernel(gradient, m, v, variable, c: dict, decay: bool):
    """(m, v, variable) after one RAdam step; `c` holds `RAdam._step_scalars`."""
    zero = _zero_of(c["iterations"])
    m = _rounded(c["beta_1"] * m, zero) + _rounded(c["one_minus_beta_1"] * gradient, zero)
    v = (_rounded(c["beta_2"] * v, zero)
         + _rounded(c["one_minus_beta_2"] * tf.square(gradient), zero))
    m_hat = _rounded(m * c["inverse_bias_1"], zero)
    # A select, not a conditional: while rho_t < 5 the rectifier is NaN and
    # the select takes m_hat.
    update = tf.where(c["rectify"],
                      c["rectifier"] * m_hat / (tf.sqrt(v * c["inverse_bias_2"]) + c["epsilon"]),
                      m_hat)
    if decay:
        update = update + _rounded(c["weight_decay"] * variable, zero)
    return m, v, variable - _rounded(c["lr"] * update, zero)


@tf.function(jit_compile=True, reduce_retracing=True)
def _lookahead_kernel(variable, slow, alpha, step):
    """slow + alpha * (variable - slow)."""
    return slow + _rounded(alpha * (variable - slow), _zero_of(step))


def paper_optimizer(learning_rate: float = PAPER_LEARNING_RATE) -> Lookahead:
    """The papers' optimizer: ``Lookahead(RAdam(learning_rate), 6, 0.5)``.

    RAdam with epsilon 1e-6 and weight decay 1e-2 (docs/method.md §3).
    """
    return Lookahead(RAdam(learning_rate=learning_rate))
