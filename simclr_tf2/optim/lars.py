"""LARS: layer-wise adaptive rate scaling (You et al., 2017), as SimCLR uses it.

A Keras 3 optimizer with the constructor of the paper's released LARS, so code
written for it ports directly. Weight decay is part of the update (added to the
gradient before the trust ratio), not Keras's decoupled weight decay.

This module imports nothing else from the package.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
from keras import ops

# What the paper's code leaves out of weight decay and of the trust ratio.
DEFAULT_EXCLUDE = ("batch_normalization", "bias", "head_supervised")


@keras.saving.register_keras_serializable(package="simclr_tf2")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise adaptive rate scaling with momentum.

    Args:
        learning_rate: a float or a `LearningRateSchedule`.
        momentum: momentum of the update.
        weight_decay: L2 coefficient added to the gradient inside the update.
        exclude_from_weight_decay: regular expressions; a variable whose Keras
            path (e.g. "simclr_model/resnet/.../batch_normalization_1/gamma")
            matches any of them gets no weight decay.
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
        weight_decay: float = 0.0,
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
        if weight_decay < 0:
            raise ValueError(f"LARS weight_decay={weight_decay} must be >= 0.")
        self.momentum = momentum
        # Keras's base class reads `weight_decay` for decoupled decay; that path
        # is disabled below (`_apply_weight_decay`) because LARS applies it itself.
        self.weight_decay = weight_decay
        self.classic_momentum = classic_momentum
        self.eeta = eeta
        self.nesterov = nesterov
        self._decay_exclusions = list(exclude_from_weight_decay or [])
        self._adaptation_exclusions = (
            list(exclude_from_layer_adaptation)
            if exclude_from_layer_adaptation is not None
            else list(self._decay_exclusions)
        )

    @staticmethod
    def _matches(path: str, patterns: Sequence[str]) -> bool:
        return any(re.search(p, path) for p in patterns)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided here from the Keras variables' paths: update_step receives the
        # backend variable, which has no path.
        self._use_decay = [not self._matches(v.path, self._decay_exclusions) for v in variables]
        self._use_adaptation = [
            not self._matches(v.path, self._adaptation_exclusions) for v in variables
        ]

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
                "weight_decay": self.weight_decay,
                "exclude_from_weight_decay": list(self._decay_exclusions),
                "exclude_from_layer_adaptation": list(self._adaptation_exclusions),
                "classic_momentum": self.classic_momentum,
                "eeta": self.eeta,
                "nesterov": self.nesterov,
            }
        )
        return config
