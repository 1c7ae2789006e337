"""The papers' optimizer for Keras 3: `RAdam` wrapped in `Lookahead` (docs/method.md §3).

Keras 3 ships neither optimizer, and TF-Addons (which the reference used,
version 0.8.3) does not work with Keras 3. Both classes here reproduce
TF-Addons 0.8.3's ``Lookahead(RectifiedAdam(...))`` step by step in float32,
including the order of the floating-point operations, so that every weight
after every step equals, bit for bit, that of the reference's formulas
computed one float32 operation at a time (tests/test_optimizers.py). The
element-wise update of each variable is compiled with XLA into one pass over
its memory, with every operation rounded as a separate TensorFlow kernel
rounds it (no fused multiply-add; `cb_keras._backend.optimizer_kernels`).

Both are ordinary Keras optimizers written with ``keras.ops``: they run on
the TensorFlow and JAX backends, work in ``model.fit`` (on TensorFlow also
under ``tf.distribute.MirroredStrategy``; under mixed precision Keras wraps
them in a ``LossScaleOptimizer``) and save and load with the model, state
included (``model.save("x.keras")`` / ``keras.models.load_model``).
"""

from __future__ import annotations

import keras
from keras import ops

from cb_keras._backend import optimizer_kernels

PAPER_LEARNING_RATE = 1e-3
RECTIFICATION_THRESHOLD = 5.0


@keras.saving.register_keras_serializable(package="cb_keras")
class RAdam(keras.optimizers.Optimizer):
    """Rectified Adam with decoupled weight decay, as TF-Addons 0.8.3's RectifiedAdam.

    For each variable w with gradient g at step t = 1, 2, ... (all in the
    variable's dtype):

        m = b1*m + (1-b1)*g              v = b2*v + (1-b2)*g*g
        m_hat = m / (1-b1^t)             v_hat = sqrt(v / (1-b2^t))
        rho_inf = 2/(1-b2) - 1           rho_t = rho_inf - 2*t*b2^t / (1-b2^t)
        step = r_t * m_hat / (v_hat + epsilon)  if rho_t >= 5  else m_hat
        w = w - lr * (step + weight_decay * w)

    with ``r_t = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``,
    each operation in the order TF-Addons 0.8.3 writes it (later versions
    multiply by ``1/(1-b^t)`` instead of dividing, which rounds differently).
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

    def _step_scalars(self, dtype, device, learning_rate) -> dict:
        """The scalars of this step in `dtype` (see the class docstring), cached per step.

        In TF-Addons 0.8.3's order of operations: ``rho_t`` divides by
        ``1 - b2^t``, and the kernel divides by the bias corrections.
        """
        cache = getattr(self, "_scalars_of_step", None)
        if cache is not None and (dtype, device) in cache:
            return cache[(dtype, device)]
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        iterations = optimizer_kernels.value_of(self.iterations)
        zero = optimizer_kernels.zero_of(iterations)

        def divide(x, y):  # no reciprocal (`optimizer_kernels.quotient`)
            return optimizer_kernels.quotient(x, y, zero)

        step = ops.cast(iterations + 1, dtype)
        beta_1_power = ops.power(beta_1, step)
        beta_2_power = ops.power(beta_2, step)
        rho_inf = divide(2.0, 1.0 - beta_2) - 1.0
        rho_t = rho_inf - divide(2.0 * step * beta_2_power, 1.0 - beta_2_power)
        rectifier_squared = divide(divide(divide(rho_t - 4.0, rho_inf - 4.0) * (rho_t - 2.0),
                                          rho_inf - 2.0) * rho_inf, rho_t)
        scalars = {
            "lr": ops.cast(learning_rate, dtype),
            "beta_1": beta_1, "one_minus_beta_1": 1.0 - beta_1,
            "beta_2": beta_2, "one_minus_beta_2": 1.0 - beta_2,
            "bias_1": 1.0 - beta_1_power, "bias_2": 1.0 - beta_2_power,
            "rectify": rho_t >= RECTIFICATION_THRESHOLD,
            "rectifier": optimizer_kernels.sqrt(rectifier_squared),
            "epsilon": ops.cast(self.epsilon, dtype),
            "weight_decay": ops.cast(self.weight_decay or 0.0, dtype),
            "zero": zero,
        }
        if cache is not None:
            cache[(dtype, device)] = scalars
        return scalars

    def update_step(self, gradient, variable, learning_rate):
        """One RAdam step of one variable (see the class docstring), in one fused pass."""
        # Under tf.distribute each device's variable needs its own scalars.
        c = self._step_scalars(variable.dtype, getattr(variable, "device", None), learning_rate)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        decay = bool(self.weight_decay and self._use_weight_decay(variable))
        tensor = optimizer_kernels.value_of
        m_new, v_new, w_new = optimizer_kernels.radam_step(
            ops.cast(tensor(gradient), variable.dtype), tensor(m), tensor(v), tensor(variable),
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
                f"cb_keras.paper.optimizers.RAdam(), got {optimizer!r}.")
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

    def _update_slow_weights(self, variables, update, condition) -> None:
        """If `condition`: ``(w, slow) = update(w, slow)`` for every variable."""
        pairs = [(v, self._slow_weights[self._get_variable_index(v)]) for v in variables]
        optimizer_kernels.update_if(condition, pairs, update,
                                    getattr(self, "_distribution_strategy", None))

    def _synchronize(self, variable, slow):
        """slow += alpha * (w - slow); w = slow (TF-Addons' order), in one fused pass."""
        target = optimizer_kernels.lookahead_step(
            variable, slow, ops.cast(self.slow_step_size, variable.dtype),
            optimizer_kernels.zero_of(optimizer_kernels.value_of(self._iterations)))
        return target, target

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
    return variable, variable


def paper_optimizer(learning_rate: float = PAPER_LEARNING_RATE) -> Lookahead:
    """The papers' optimizer: ``Lookahead(RAdam(learning_rate), 6, 0.5)``.

    RAdam with epsilon 1e-6 and weight decay 1e-2 (docs/method.md §3).
    """
    return Lookahead(RAdam(learning_rate=learning_rate))
