"""SimCLR's learning-rate schedule: batch-scaled, linear warm-up, cosine decay."""

from __future__ import annotations

import math

import keras
from keras import ops

from simclr_tf2.config import SCALINGS


def scaled_learning_rate(base_learning_rate: float, batch_size: int, scaling: str) -> float:
    """The peak learning rate: base x batch/256 ("linear") or base x sqrt(batch) ("sqrt")."""
    if scaling == "linear":
        return base_learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return base_learning_rate * math.sqrt(batch_size)
    raise ValueError(f"learning_rate_scaling={scaling!r} is not one of {SCALINGS}.")


def warmup_steps_for(warmup_epochs: float, num_examples: int, batch_size: int) -> int:
    """Number of warm-up steps for `warmup_epochs` epochs of `num_examples`."""
    return int(round(warmup_epochs * num_examples / batch_size))


@keras.saving.register_keras_serializable(package="simclr_tf2")
class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to the scaled learning rate, then cosine decay to 0.

    At step s: `peak * s / warmup_steps` while s < warmup_steps, then
    `peak * 0.5 * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps)))`,
    which is 0 at s = total_steps; `peak` is `base_learning_rate` scaled by the
    batch size (see `scaled_learning_rate`).

    Args:
        base_learning_rate: the learning rate before batch scaling.
        batch_size: the global batch size.
        total_steps: number of training steps; the rate reaches 0 there.
        warmup_steps: number of linear warm-up steps (0 for none).
        scaling: "linear" or "sqrt".
    """

    def __init__(
        self,
        base_learning_rate: float,
        batch_size: int,
        total_steps: int,
        warmup_steps: int = 0,
        scaling: str = "linear",
        name: str | None = None,
    ):
        super().__init__()
        if total_steps <= 0:
            raise ValueError(f"total_steps={total_steps} must be positive.")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps].")
        self.base_learning_rate = base_learning_rate
        self.batch_size = batch_size
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.scaling = scaling
        self.name = name
        self.peak_learning_rate = scaled_learning_rate(base_learning_rate, batch_size, scaling)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak_learning_rate, "float32")
        # Through ops, so that a subclass may hold the steps in variables and change them
        # while training (tools/cifar_study.py fits a time budget so). With no warm-up,
        # step < 0 never holds: the cosine from the first step.
        warmup = ops.cast(self.warmup_steps, "float32")
        decay_steps = ops.maximum(ops.cast(self.total_steps, "float32") - warmup, 1.0)
        progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < warmup, peak * step / ops.maximum(warmup, 1.0), cosine)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "batch_size": self.batch_size,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "scaling": self.scaling,
            "name": self.name,
        }
