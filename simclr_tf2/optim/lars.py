"""LARS: layer-wise adaptive rate scaling (You et al., 2017), as SimCLR uses it.

A Keras 3 optimizer with the constructor of the paper's released LARS, so code
written for it ports directly. Weight decay is part of the update (added to the
gradient before the trust ratio), not Keras's decoupled weight decay.

Which variables are decayed and adapted is decided by one `WeightDecay` rule
(`simclr_tf2.optim.weight_decay`), shared with the model's loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from simclr_tf2.optim.weight_decay import WeightDecay


@keras.saving.register_keras_serializable(package="simclr_tf2")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise adaptive rate scaling with momentum.

    Args:
        learning_rate: a float or a `LearningRateSchedule`.
        momentum: momentum of the update.
        weight_decay: L2 coefficient added to the gradient inside the update, or
            a `WeightDecay` rule (shared with the model) saying which variables
            get decay and the trust ratio. With a number, the paper's rule:
            kernels do, batch-norm parameters and biases (rank < 2) don't.
        exclude_from_weight_decay: regular expressions, as the authors' LARS
            takes them: when this or the next is given, exactly the variables
            whose Keras path
            (e.g. "simclr_model/resnet/.../batch_normalization_1/gamma")
            matches one of them get no weight decay.
        exclude_from_layer_adaptation: the same for the trust ratio; None
            means the weight-decay list.
        classic_momentum: if True the trust ratio scales the learning rate
            before momentum (the paper's code default); if False it scales the
            momentum-accumulated update.
        eeta: the trust coefficient.
        nesterov: Nesterov momentum.
        **kwargs: the arguments of `keras.optimizers.Optimizer` (name,
            clipnorm, ...), except `weight_decay`, which is the one above.
    """

    def __init__(
        self,
        learning_rate=0.001,
        momentum: float = 0.9,
        weight_decay: float | WeightDecay = 0.0,
        exclude_from_weight_decay: Sequence[str] | None = None,
        exclude_from_layer_adaptation: Sequence[str] | None = None,
        classic_momentum: bool = True,
        eeta: float = 0.001,
        nesterov: bool = False,
        name: str = "LARS",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if momentum < 0:
            raise ValueError(f"LARS momentum={momentum} must be >= 0.")
        if isinstance(weight_decay, dict):  # from get_config
            weight_decay = WeightDecay.from_config(weight_decay)
        if not isinstance(weight_decay, WeightDecay):
            if weight_decay < 0:
                raise ValueError(f"LARS weight_decay={weight_decay} must be >= 0.")

            exclude = adaptation = None
            if exclude_from_weight_decay is not None or exclude_from_layer_adaptation is not None:
                # The authors' arguments: exactly these patterns (none = every variable).
                exclude = tuple(exclude_from_weight_decay or ())
                if exclude_from_layer_adaptation is not None:
                    adaptation = tuple(exclude_from_layer_adaptation)
            weight_decay = WeightDecay(
                weight_decay, by_optimizer=True, exclude=exclude, exclude_adaptation=adaptation
            )
        self.momentum = momentum
        self.decay_rule = weight_decay
        # Keras's base class reads `weight_decay` for decoupled decay; that path
        # is disabled below (`_apply_weight_decay`) because LARS applies it itself.
        self.weight_decay = weight_decay.rate
        self.classic_momentum = classic_momentum
        self.eeta = eeta
        self.nesterov = nesterov

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided here from the Keras variables' paths: update_step receives the
        # backend variable, which has no path.
        self._use_decay = [self.decay_rule.in_update(v) for v in variables]
        self._use_adaptation = [self.decay_rule.trust_ratio(v) for v in variables]

    def _apply_weight_decay(self, variables):
        # Weight decay is applied inside update_step, before the trust ratio.
        return

    def _trust_ratio(self, param, direction):
        w_norm = ops.sqrt(ops.sum(ops.square(param)))
        d_norm = ops.sqrt(ops.sum(ops.square(direction)))
        ratio = self.eeta * w_norm / ops.where(d_norm > 0, d_norm, 1.0)
        return ops.where(ops.logical_and(w_norm > 0, d_norm > 0), ratio, 1.0)

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        grad = ops.cast(gradient, dtype)
        momentum = ops.cast(self.momentum, dtype)
        velocity = self.momentums[index]

        if self.weight_decay and self._use_decay[index]:
            grad = grad + ops.cast(self.weight_decay, dtype) * variable
        adapt = self._use_adaptation[index]

        if self.classic_momentum:
            scaled_lr = lr * self._trust_ratio(variable, grad) if adapt else lr
            next_v = momentum * velocity + scaled_lr * grad
            update = momentum * next_v + scaled_lr * grad if self.nesterov else next_v
            self.assign(velocity, next_v)
            self.assign_sub(variable, update)
        else:
            next_v = momentum * velocity + grad
            update = momentum * next_v + grad if self.nesterov else next_v
            scaled_lr = lr * self._trust_ratio(variable, update) if adapt else lr
            self.assign(velocity, next_v)
            self.assign_sub(variable, scaled_lr * update)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay": self.decay_rule.get_config(),
                "classic_momentum": self.classic_momentum,
                "eeta": self.eeta,
                "nesterov": self.nesterov,
            }
        )
        return config
