"""Optimizers and learning-rate schedules for SimCLR."""

from __future__ import annotations

import keras

from simclr_tf2.config import OPTIMIZERS
from simclr_tf2.optim.lars import LARS
from simclr_tf2.optim.schedules import (
    WarmUpAndCosineDecay,
    scaled_learning_rate,
    warmup_steps_for,
)
from simclr_tf2.optim.weight_decay import WeightDecay

__all__ = [
    "LARS",
    "OPTIMIZERS",
    "WarmUpAndCosineDecay",
    "WeightDecay",
    "build_optimizer",
    "scaled_learning_rate",
    "warmup_steps_for",
]


def build_optimizer(
    name: str,
    learning_rate,
    momentum: float = 0.9,
    weight_decay: float | WeightDecay = 0.0,
) -> keras.optimizers.Optimizer:
    """The optimizer called `name` (the `--optimizer` flag).

    Only LARS applies weight decay itself, as its `WeightDecay` rule says (a
    `SimCLRModel` compiled with it shares that rule); for the others the model
    adds it to the loss as an L2 term, as the paper's code does.

    Args:
        name: "lars", "momentum" (SGD with Nesterov), "adam" or "lamb".
        learning_rate: a float or a `LearningRateSchedule`.
        momentum: momentum for "lars" and "momentum".
        weight_decay: the L2 coefficient or rule (used here by "lars" only).
    """
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "lamb":
        return keras.optimizers.Lamb(learning_rate)
    raise ValueError(f"optimizer={name!r} is not one of {OPTIMIZERS}.")
