"""Mixed precision, XLA and steps_per_execution: a few steps of `fit` on one fixed batch.

Each run builds the model the way `train.run` does (the dtype policy is set for
the build only) and trains on the same batch repeated, so the loss must fall.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.build import dtype_policy
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel
from simclr_tf2.optim import WarmUpAndCosineDecay, build_optimizer

SIZE = 8
BATCH = 16
STEPS = 8


class Losses(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(logs["contrast_loss"]))


def train(policy="none", jit_compile=False, steps_per_execution=1, optimizer="lars"):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, SIZE, SIZE, 6)).astype(np.float32)
    y = rng.integers(0, 10, BATCH)
    with dtype_policy(policy):
        model = SimCLRModel(
            ResNet(10, 0.25, cifar_stem=True), num_classes=10, temperature=0.5, weight_decay=1e-6
        )
        model.build((None, SIZE, SIZE, 3))
        schedule = WarmUpAndCosineDecay(0.5, BATCH, total_steps=100, warmup_steps=0)
        model.compile(
            optimizer=build_optimizer(optimizer, schedule, weight_decay=1e-6),
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )
    # The policy only applied while building: nothing leaks into later models.
    assert keras.config.dtype_policy().name == "float32"
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat(STEPS)
    recorder = Losses()
    model.fit(dataset, epochs=1, verbose=0, callbacks=[recorder], shuffle=False)
    return model, recorder.values


def assert_learns(losses, calls=STEPS):
    assert len(losses) == calls
    assert all(np.isfinite(losses))
    # Logged losses are running means over the epoch, so the fall shows damped.
    assert losses[-1] < losses[0] - 0.02, losses


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_learns_with_float32_losses_and_statistics(policy):
    model, losses = train(policy)
    assert_learns(losses)
    compute = "bfloat16" if policy == "mixed_bfloat16" else "float16"
    conv = next(v for v in model.encoder.weights if "kernel" in v.path)
    assert conv.dtype == "float32"  # weights stay float32 ...
    assert model.encoder.dtype_policy.compute_dtype == compute  # ... the trunk computes in 16 bits
    moving = [v for v in model.weights if "moving_" in v.path]
    assert moving and all(v.dtype == "float32" for v in moving)
    out = model(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert out["final_avg_pool"].dtype == compute
    assert out["logits_sup"].dtype == "float32"
    terms = model.compute_losses(np.zeros((2, SIZE, SIZE, 6), np.float32), np.array([0, 1]))
    assert terms["contrast_loss"].dtype == tf.float32
    if policy == "mixed_float16":
        # Loss scaling: compile wrapped our optimizer, and LARS still sees its settings.
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert type(model.optimizer.inner_optimizer).__name__ == "LARS"
        assert float(model.optimizer.dynamic_scale) > 1.0
    else:
        assert type(model.optimizer).__name__ == "LARS"


def test_jit_compiled_step_learns_and_matches_the_plain_step():
    # XLA compiles the whole step: static shapes, no host-only ops (what a TPU needs too).
    _, plain = train()
    _, compiled = train(jit_compile=True)
    assert_learns(compiled)
    # Same maths, other kernels: float32 round-off only.
    np.testing.assert_allclose(compiled, plain, rtol=2e-3)


def test_steps_per_execution_learns():
    model, losses = train(steps_per_execution=4)
    # Callbacks see one batch end per execution of 4 steps.
    assert_learns(losses, calls=STEPS // 4)
    assert int(model.optimizer.iterations.numpy()) == STEPS
