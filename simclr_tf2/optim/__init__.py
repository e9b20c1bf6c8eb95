"""Optimizers and learning-rate schedules for SimCLR."""

from __future__ import annotations

import keras

from simclr_tf2.optim.lars import DEFAULT_EXCLUDE, LARS
from simclr_tf2.optim.schedules import (
    WarmUpAndCosineDecay,
    scaled_learning_rate,
    warmup_steps_for,
)

OPTIMIZERS = ("lars", "momentum", "adam", "lamb")

__all__ = [
    "DEFAULT_EXCLUDE",
    "LARS",
    "OPTIMIZERS",
    "WarmUpAndCosineDecay",
    "build_optimizer",
    "scaled_learning_rate",
    "warmup_steps_for",
]


def build_optimizer(
    name: str, learning_rate, momentum: float = 0.9, weight_decay: float = 0.0
) -> keras.optimizers.Optimizer:
    """The optimizer called `name` (the `--optimizer` flag).

    Only LARS applies `weight_decay` itself (excluding batch norm, biases and
    the supervised head); for the others `SimCLRModel` adds it to the loss as an
    L2 term, as the paper's code does.

    Args:
        name: "lars", "momentum" (SGD with Nesterov), "adam" or "lamb".
        learning_rate: a float or a `LearningRateSchedule`.
        momentum: momentum for "lars" and "momentum".
        weight_decay: the L2 coefficient (used here by "lars" only).
    """
    if name == "lars":
        return LARS(
            learning_rate,
            momentum=momentum,
            weight_decay=weight_decay,
            exclude_from_weight_decay=list(DEFAULT_EXCLUDE),
        )
    if name == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=True)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "lamb":
        return keras.optimizers.Lamb(learning_rate)
    raise ValueError(f"optimizer={name!r} is not one of {OPTIMIZERS}.")
