"""The pieces of a run, each built from its part of a `Config`.

`build_model`, `build_schedule` and `compile_model` are what `assembly.build_run`
puts together, and what a tool or a notebook uses to build one piece the way a
run would. `Plan` turns the data size and the schedule settings into steps.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np
from absl import logging

from simclr_tf2.config import Config
from simclr_tf2.models.batch_norm import BatchNormSpec
from simclr_tf2.models.heads import ProjectionHead
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import WarmUpAndCosineDecay, build_optimizer, warmup_steps_for
from simclr_tf2.precision import resolve_precision


@contextlib.contextmanager
def dtype_policy(name: str):
    """Builds layers under the `name` mixed-precision policy ("none" = the current
    one; "auto" = `resolve_precision`'s choice for the current strategy's devices),
    then restores the policy that was set before."""
    name, _ = resolve_precision(name)
    if name == "none":
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def num_params(variables) -> int:
    """The number of scalars in `variables`."""
    return int(sum(np.prod(v.shape) for v in variables))


def build_model(config: Config, num_classes: int | None) -> SimCLRModel:
    """The SimCLRModel a config describes, built for its image size (call inside the
    strategy's scope and `dtype_policy`). The one place that turns `config.model`
    into the model's parts; their batch norms share one `BatchNormSpec`."""
    m = config.model
    batch_norm = BatchNormSpec(
        synchronized=m.global_bn, momentum=m.batch_norm_decay, kernels=m.kernels
    )
    model = SimCLRModel(
        ResNet(
            m.resnet_depth,
            m.width_multiplier,
            config.cifar_stem,
            sk_ratio=m.sk_ratio,
            se_ratio=m.se_ratio,
            batch_norm=batch_norm,
        ),
        ProjectionHead(m.proj_head_mode, m.proj_out_dim, m.num_proj_layers, batch_norm=batch_norm),
        num_classes=num_classes,
        train_mode=config.train_mode,
        ft_proj_selector=m.ft_proj_selector,
        temperature=m.temperature,
        hidden_norm=m.hidden_norm,
        lineareval_while_pretraining=m.lineareval_while_pretraining,
        fine_tune_after_block=m.fine_tune_after_block,
        weight_decay=config.optim.weight_decay,
        zero_init_logits_layer=m.zero_init_logits_layer,
        distill_temperature=config.distill.distill_temperature,
        distill_label_weight=config.distill.distill_label_weight,
    )
    size = config.data.image_size
    model.build((None, size, size, 3))
    return model


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps a run takes: examples per epoch, steps per epoch, the total,
    the steps between checkpoints and the warm-up steps."""

    examples: int
    steps_per_epoch: int
    total_steps: int
    checkpoint_every: int
    warmup_steps: int

    @classmethod
    def of(cls, config: Config, num_examples: int | None) -> Plan:
        """The plan for training on `num_examples` examples (None: one batch per epoch,
        e.g. when only evaluating)."""
        t = config.train
        examples = num_examples or t.train_batch_size
        steps_per_epoch = max(1, examples // t.train_batch_size)
        total = t.train_steps or t.train_epochs * steps_per_epoch
        every = t.checkpoint_steps or t.checkpoint_epochs * steps_per_epoch
        every = max(1, min(every, total))
        # Keras runs whole executions of steps_per_execution steps: intervals from
        # epochs are rounded to them (validate() rejects explicit steps that aren't).
        spe = config.runtime.steps_per_execution
        if total % spe or every % spe:
            rounded = max(spe, total // spe * spe), max(spe, every // spe * spe)
            logging.info(
                "%d steps with checkpoints every %d, rounded to %d and %d: whole executions of "
                "--steps_per_execution=%d.",
                total,
                every,
                *rounded,
                spe,
            )
            total, every = rounded
        warmup = warmup_steps_for(config.optim.warmup_epochs, examples, t.train_batch_size)
        return cls(examples, steps_per_epoch, total, every, min(warmup, total))


def build_schedule(config: Config, plan: Plan) -> WarmUpAndCosineDecay:
    """The learning-rate schedule: batch-scaled, linear warm-up, cosine decay."""
    o = config.optim
    return WarmUpAndCosineDecay(
        o.learning_rate,
        config.train.train_batch_size,
        plan.total_steps,
        plan.warmup_steps,
        o.learning_rate_scaling,
    )


def compile_model(model: SimCLRModel, config: Config, learning_rate) -> None:
    """Compiles `model` with the configured optimizer at `learning_rate` (a number or
    a schedule), and builds the optimizer's slots (call inside the strategy's scope).
    An optimizer that decays in its update (LARS) and the model then share one
    weight-decay rule (`SimCLRModel.compile`)."""
    o, r = config.optim, config.runtime
    model.compile(
        optimizer=build_optimizer(o.optimizer, learning_rate, o.momentum, o.weight_decay),
        jit_compile=r.jit_compile,
        steps_per_execution=r.steps_per_execution,
    )
    # With mixed_float16, compile wrapped the optimizer for loss scaling.
    model.optimizer.build(model.trainable_variables)
