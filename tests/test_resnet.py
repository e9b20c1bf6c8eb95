"""ResNet v1 trunk: parameter counts, named outputs, initialisation, options."""

import keras
import numpy as np
import pytest

from simclr_tf2.models.batch_norm import BatchNormSpec
from simclr_tf2.models.resnet import BLOCK_OUTPUT_NAMES, BLOCK_SPECS, ResNet


def n_params(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


def build(model: ResNet, size: int) -> dict:
    return model(np.zeros((1, size, size, 3), np.float32), training=False)


@pytest.mark.parametrize(
    "depth, width, cifar, size, expected",
    [
        # torchvision / Keras ResNet-50 without its classifier: 23.51M.
        (50, 1, False, 224, 23.5e6),
        # ResNet-18 with a 3x3 stem and no fc: 11.17M.
        (18, 1, True, 32, 11.2e6),
        # ResNet-10 (one block per group), 3x3 stem: 4.89M convolution weights + 5,760 BN.
        (10, 1, True, 32, 4.898e6),
        # The paper's ResNet-50 (2x): 94M (Table 8 of Chen et al. 2020 lists 94M).
        (50, 2, False, 32, 94e6),
    ],
)
def test_trunk_parameter_counts(depth, width, cifar, size, expected):
    model = ResNet(depth, width, cifar)
    build(model, size)
    assert n_params(model.trainable_variables) == pytest.approx(expected, rel=0.01)


def test_resnet50_named_outputs_at_224():
    outputs = build(ResNet(50), 224)
    assert list(outputs) == list(BLOCK_OUTPUT_NAMES)
    expected = {
        "initial_conv": (1, 112, 112, 64),
        "initial_max_pool": (1, 56, 56, 64),
        "block_group1": (1, 56, 56, 256),
        "block_group2": (1, 28, 28, 512),
        "block_group3": (1, 14, 14, 1024),
        "block_group4": (1, 7, 7, 2048),
        "final_avg_pool": (1, 2048),
    }
    assert {k: tuple(v.shape) for k, v in outputs.items()} == expected


def test_resnet18_cifar_stem_named_outputs():
    outputs = build(ResNet(18, 1, cifar_stem=True), 32)
    expected = {
        "initial_conv": (1, 32, 32, 64),
        "initial_max_pool": (1, 32, 32, 64),  # no max-pool: identity
        "block_group1": (1, 32, 32, 64),
        "block_group2": (1, 16, 16, 128),
        "block_group3": (1, 8, 8, 256),
        "block_group4": (1, 4, 4, 512),
        "final_avg_pool": (1, 512),
    }
    assert {k: tuple(v.shape) for k, v in outputs.items()} == expected


@pytest.mark.parametrize(
    "depth, width",
    [
        (10, 0.25),
        (18, 0.25),
        (34, 0.5),
        (50, 0.5),
        # The deep ones take a minute or two each on 2 cores: in the long group.
        pytest.param(101, 0.25, marks=pytest.mark.long),
        pytest.param(152, 0.5, marks=pytest.mark.long),
        pytest.param(200, 0.25, marks=pytest.mark.long),
    ],
)
def test_every_depth_at_small_widths(depth, width):
    model = ResNet(depth, width, cifar_stem=True)
    outputs = build(model, 16)
    expansion = 4 if depth >= 50 else 1
    assert outputs["final_avg_pool"].shape == (1, int(512 * width) * expansion)
    assert model.output_width == int(512 * width) * expansion
    # Blocks per group as in the spec (one conv kernel per main-path conv).
    kernels = [v for v in model.trainable_variables if v.path.endswith("kernel")]
    convs_per_block = 3 if depth >= 50 else 2
    n_blocks = sum(BLOCK_SPECS[depth][1])
    assert len(kernels) == 1 + n_blocks * convs_per_block + 4  # stem + blocks + 4 shortcuts


def test_last_norm_of_each_block_starts_at_zero():
    model = ResNet(50, 0.25, cifar_stem=True)
    build(model, 16)
    gammas = {v.path: v.numpy() for v in model.variables if v.path.endswith("gamma")}
    last = [p for p in gammas if "batch_normalization_3/" in p]
    others = [p for p in gammas if "batch_normalization_3/" not in p]
    assert len(last) == 16  # one per bottleneck block of ResNet-50
    assert all(np.all(gammas[p] == 0) for p in last)
    assert all(np.all(gammas[p] == 1) for p in others)
    # Each block therefore starts as relu(shortcut).


@pytest.mark.parametrize("global_bn", [True, False])
def test_global_bn_switches_every_norm(global_bn):
    model = ResNet(
        18, 0.25, cifar_stem=True, batch_norm=BatchNormSpec(synchronized=global_bn, momentum=0.99)
    )
    build(model, 16)
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) == 1 + 8 * 2 + 4  # stem, 2 per block, 4 shortcuts
    assert all(n.synchronized == global_bn for n in norms)
    assert all(n.momentum == 0.99 for n in norms)


def test_config_round_trip():
    model = ResNet(
        34, 0.5, cifar_stem=True, batch_norm=BatchNormSpec(synchronized=False, epsilon=1e-3)
    )
    clone = ResNet.from_config(model.get_config())
    assert clone.get_config() == model.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="resnet_depth=42"):
        ResNet(42)
    with pytest.raises(ValueError, match="width_multiplier=0"):
        ResNet(18, 0)


@pytest.mark.parametrize("kernel_size", [1, 3, 7])
def test_strided_conv_keeps_no_padded_copy(kernel_size):
    # Same result as the reference's pad-then-"valid" convolution, forward and
    # backward; the backward pads again instead of reading the forward's padded
    # copy (which would stay alive until then), and uses "valid" backprop ops.
    import tensorflow as tf

    from simclr_tf2.models.resnet import FixedPaddingConv2D

    x = tf.constant(np.random.default_rng(0).random((2, 15, 16, 4)), tf.float32)
    layer = FixedPaddingConv2D(8, kernel_size, strides=2)
    total = kernel_size - 1
    pads = [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]]

    def reference(inputs):
        return tf.nn.conv2d(tf.pad(inputs, pads), layer.conv.kernel, 2, "VALID")

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = layer(x), reference(x)
    assert ours.shape == theirs.shape == (2, 8, 8, 8)
    assert tuple(layer.conv.compute_output_shape((None, 15, 16, 4))) == (None, 8, 8, 8)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    for ours_grad, their_grad in zip(
        tape.gradient(ours, [x, layer.conv.kernel]),
        tape.gradient(theirs, [x, layer.conv.kernel]),
        strict=True,
    ):
        np.testing.assert_allclose(ours_grad, their_grad, rtol=1e-4, atol=1e-4)

    @tf.function
    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = layer(inputs)
        return tape.gradient(y, [inputs, layer.conv.kernel])

    ops = step.get_concrete_function(tf.TensorSpec(x.shape)).graph.get_operations()
    backprop = [op for op in ops if op.type.startswith("Conv2DBackprop")]
    assert len(backprop) == 2
    assert all(op.get_attr("padding") == b"VALID" for op in backprop)
    for op in [op for op in ops if op.type == "Pad"]:
        readers = {c.type for c in op.outputs[0].consumers()}
        assert readers <= {"Conv2D"} or "Conv2DBackpropFilter" in readers, readers
    if kernel_size > 1:
        forward_pads = [
            op
            for op in ops
            if op.type == "Pad" and {c.type for c in op.outputs[0].consumers()} == {"Conv2D"}
        ]
        assert len(forward_pads) == 1
    clone = type(layer.conv).from_config(layer.conv.get_config())
    assert clone.strides == (2, 2) and getattr(clone, "pads", None) == getattr(
        layer.conv, "pads", None
    )


@pytest.mark.parametrize("block_type, strides", [("residual", 1), ("bottleneck", 2)])
def test_block_recomputes_relu_for_the_backward(block_type, strides, monkeypatch):
    # norm -> ReLU -> conv inside a block: same outputs, gradients and moving
    # statistics as calling the layers; the backward reads no ReLU output of
    # the forward pass (it recomputes it), so that copy is not kept.
    import tensorflow as tf

    from simclr_tf2.models import resnet

    block_cls = resnet.ResidualBlock if block_type == "residual" else resnet.BottleneckBlock
    block = block_cls(8, strides=strides, use_projection=True)
    x = tf.constant(np.random.default_rng(0).normal(size=(4, 8, 8, 16)), tf.float32)
    shape = block(x, training=False).shape
    rng = np.random.default_rng(1)
    for v in block.weights:  # non-trivial scale and offset (the last gamma starts at 0)
        if v.path.endswith(("gamma", "beta")):
            v.assign(rng.uniform(0.5, 1.5, v.shape) * (1 if v.path.endswith("gamma") else -1))
    start = [v.numpy() for v in block.weights]
    mask = tf.constant(rng.normal(size=shape), tf.float32)

    def step(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(block(inputs, training=True) * mask)
        return loss, tape.gradient(loss, [inputs, *block.trainable_weights])

    def run():
        for v, value in zip(block.weights, start, strict=True):
            v.assign(value)
        loss, grads = tf.function(step)(x)
        return loss, grads, [v.numpy() for v in block.non_trainable_weights]

    ours = run()
    graph = tf.function(step).get_concrete_function(x).graph
    with monkeypatch.context() as patch:
        # The kernel declines: the block calls its layers (fused batch norm still).
        patch.setattr(resnet.cpu_kernels, "norm_relu_conv", lambda *args: None)
        theirs = run()
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)
    for a, b in zip(ours[1], theirs[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    for a, b in zip(ours[2], theirs[2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    ops = graph.get_operations()
    units = len(block.convs) - 1  # norm -> ReLU -> conv inside the block
    recomputed = [
        op for op in ops if op.type == "FusedBatchNormV3" and not op.get_attr("is_training")
    ]
    assert len(recomputed) == units
    for op in ops:
        if op.type == "Relu" and op.inputs[0].op.type == "FusedBatchNormV3":
            readers = {c.type for c in op.outputs[0].consumers()}
            if op.inputs[0].op.get_attr("is_training"):
                # The forward's ReLU feeds its conv only (a strided conv: the pad,
                # and the identity that marks its own custom gradient), no grad op.
                assert readers <= {"Conv2D", "Pad", "IdentityN"}, readers
