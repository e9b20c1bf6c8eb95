"""BatchNormSpec, and FusedBatchNormalization: the fused kernel computing Keras's layer."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.models.batch_norm import BatchNormSpec
from simclr_tf2.models.kernels import FusedBatchNormalization


def pair(shape, dtype_policy, center=True, synchronized=True):
    """A Keras BatchNormalization and ours with the same random weights."""
    args = dict(
        momentum=0.9, epsilon=1e-5, center=center, synchronized=synchronized, dtype=dtype_policy
    )
    keras_bn = keras.layers.BatchNormalization(**args)
    ours = FusedBatchNormalization(**args)
    rng = np.random.default_rng(0)
    for layer in (keras_bn, ours):
        layer.build(shape)
    for a, b in zip(keras_bn.weights, ours.weights, strict=True):
        value = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        a.assign(value)
        b.assign(value)
    return keras_bn, ours


def run(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        # A loss that is not linear in y, so every gradient term matters.
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 3)
    grads = tape.gradient(loss, [x] + layer.trainable_weights)
    return y, grads


@pytest.mark.parametrize("shape", [(8, 5, 5, 4), (16, 7)])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("center", [True, False])
def test_same_outputs_gradients_and_moving_statistics_as_keras(shape, policy, training, center):
    keras_bn, ours = pair(shape, keras.DTypePolicy(policy), center=center)
    before = ours.moving_mean.numpy().copy()
    x = tf.random.stateless_normal(shape, seed=[1, 2]) * 3.0 + 1.0
    x = tf.cast(x, keras_bn.compute_dtype)
    y_keras, g_keras = run(keras_bn, x, training)
    y_ours, g_ours = run(ours, x, training)
    assert y_ours.dtype == y_keras.dtype and y_ours.shape == y_keras.shape
    tol = 1e-5 if policy == "float32" else 2e-2
    np.testing.assert_allclose(
        tf.cast(y_ours, tf.float32), tf.cast(y_keras, tf.float32), rtol=tol, atol=tol
    )
    for a, b in zip(g_keras, g_ours, strict=True):
        a, b = tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy()
        np.testing.assert_allclose(b, a, rtol=tol, atol=tol * np.abs(a).max())
    # Moving statistics: updated in training only, with the biased batch variance, as Keras.
    for a, b in zip(keras_bn.non_trainable_weights, ours.non_trainable_weights, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-6)
    assert (not np.allclose(ours.moving_mean.numpy(), before)) == training


def test_the_fused_kernel_runs_where_it_can():
    """The traced graph holds FusedBatchNormV3 (one op) instead of Keras's moments."""

    def ops(dtype, training):
        layer = BatchNormSpec(synchronized=True).layer("batch_normalization")
        layer.dtype_policy = keras.DTypePolicy(dtype.name)
        layer.build((4, 3, 3, 2))
        fn = tf.function(lambda x: layer(x, training=training))
        graph = fn.get_concrete_function(tf.TensorSpec((4, 3, 3, 2), dtype)).graph
        return {op.type for op in graph.get_operations()}

    assert isinstance(BatchNormSpec().layer("batch_normalization"), FusedBatchNormalization)
    assert "FusedBatchNormV3" in ops(tf.float32, True)
    assert "FusedBatchNormV3" in ops(tf.float32, False)
    # float64 has no fused kernel: Keras's own code.
    float64_ops = ops(tf.float64, True)
    assert "FusedBatchNormV3" not in float64_ops and "Sum" in float64_ops


def test_frozen_layer_uses_moving_statistics_and_still_passes_gradients():
    keras_bn, ours = pair((6, 3, 3, 4), keras.DTypePolicy("float32"))
    keras_bn.trainable = ours.trainable = False
    x = tf.random.stateless_normal((6, 3, 3, 4), seed=[3, 4])
    y_keras, g_keras = run(keras_bn, x, training=True)
    y_ours, g_ours = run(ours, x, training=True)
    np.testing.assert_allclose(y_ours, y_keras, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_ours[0], g_keras[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), keras_bn.moving_mean.numpy())


def test_spec_round_trips_through_get_config_and_json():
    spec = BatchNormSpec(synchronized=False, momentum=0.99, epsilon=1e-3, kernels="plain")
    assert BatchNormSpec.from_config(json.loads(json.dumps(spec.get_config()))) == spec
    assert BatchNormSpec.get(spec.get_config()) == spec and BatchNormSpec.get(spec) is spec
    assert BatchNormSpec.get(None) == BatchNormSpec()
    with pytest.raises(TypeError, match="batch_norm=0.9"):
        BatchNormSpec.get(0.9)
    layer = spec.layer("batch_normalization", zero_init=True, center=False)
    assert type(layer) is keras.layers.BatchNormalization
    assert (layer.synchronized, layer.momentum, layer.epsilon, layer.center) == (
        False,
        0.99,
        1e-3,
        False,
    )
    layer.build((2, 3))
    assert not layer.gamma.numpy().any()
