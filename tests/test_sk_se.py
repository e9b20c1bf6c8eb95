"""SimCLRv2's encoder variants: selective kernels (with ResNet-D) and squeeze-excitation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.models.batch_norm import BatchNormSpec
from simclr_tf2.models.heads import ProjectionHead
from simclr_tf2.models.resnet import (
    BottleneckBlock,
    ResNet,
    SelectiveKernelConv2D,
    SqueezeExcitation,
)
from simclr_tf2.models.simclr import SimCLRModel

LOCAL_BN = BatchNormSpec(synchronized=False)


def n_params(layer) -> int:
    return sum(int(np.prod(v.shape)) for v in layer.trainable_variables)


def images(n=2, size=16, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("strides", [1, 2])
def test_selective_kernel_shapes_and_attention_sums_to_one_over_branches(strides):
    sk = SelectiveKernelConv2D(24, strides, sk_ratio=0.0625, min_dim=8, batch_norm=LOCAL_BN)
    x = tf.constant(np.random.default_rng(1).normal(size=(3, 9, 9, 16)), tf.float32)
    y = sk(x, training=True)
    side = 9 if strides == 1 else 5
    assert y.shape == (3, side, side, 24)
    a, b = sk.branches(x, training=True)
    weights = sk.attention(a, b, training=True).numpy()
    assert weights.shape == (3, 2, 24)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(weights > 0)
    # The output is the attention-weighted mix of the branches.
    mix = a * weights[:, None, None, 0] + b * weights[:, None, None, 1]
    np.testing.assert_allclose(y, mix, atol=1e-5)
    # Attention descriptor: max(int(24 * 0.0625), min_dim=8) = 8 channels, 1x1 convolutions.
    assert sk.reduce.kernel.shape == (1, 1, 24, 8)
    assert sk.expand.kernel.shape == (1, 1, 8, 48)


def test_both_branches_are_3x3_halves_of_one_convolution_and_norm():
    """SimCLRv2's SK: one 3x3 convolution to 2 * filters, one batch norm + ReLU,
    split into the two branches (the authors' code; no dilated branch)."""
    sk = SelectiveKernelConv2D(4, 2, batch_norm=LOCAL_BN)
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 11, 11, 3)), tf.float32)
    a, b = sk.branches(x, training=False)
    assert sk.conv.conv.kernel.shape == (3, 3, 3, 8)
    assert sk.norm.gamma.shape == (8,)
    both = tf.nn.relu(sk.norm(sk.conv(x), training=False)).numpy()
    np.testing.assert_allclose(a, both[..., :4], atol=1e-6)
    np.testing.assert_allclose(b, both[..., 4:], atol=1e-6)
    assert a.shape == (2, 6, 6, 4)


def test_resnet_d_shortcut_pools_at_every_projection_and_counts_the_pad_at_odd_sizes():
    block = BottleneckBlock(4, 2, use_projection=True, sk_ratio=0.0625, batch_norm=LOCAL_BN)
    x = np.random.default_rng(4).normal(size=(1, 5, 5, 3)).astype(np.float32)
    pooled = block.shortcut_pool(block.shortcut_pad(x)).numpy()
    # Padded by one zero at the end, 2x2 windows at stride 2 divided by 4.
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    expected = padded.reshape(1, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(pooled, expected, atol=1e-6)
    stride1 = BottleneckBlock(4, 1, use_projection=True, sk_ratio=0.0625, batch_norm=LOCAL_BN)
    assert stride1.shortcut_pad is None and stride1.shortcut_pool.padding == "same"
    plain = BottleneckBlock(4, 2, use_projection=True, batch_norm=LOCAL_BN)
    assert plain.shortcut_pool is None and plain.shortcut_conv.strides == 2


def test_squeeze_excitation_gates_channels_in_zero_one():
    se = SqueezeExcitation(filters=16, se_ratio=0.25)
    x = tf.constant(np.random.default_rng(3).uniform(0.5, 1.0, size=(2, 5, 5, 64)), tf.float32)
    y = se(x).numpy()
    assert y.shape == x.shape
    gate = y / x.numpy()
    assert np.all((gate > 0) & (gate < 1))
    # One gate per image and channel, the same at every position.
    np.testing.assert_allclose(gate, np.broadcast_to(gate[:, :1, :1, :], gate.shape), rtol=1e-5)
    reduced = 4  # 16 * 0.25
    assert n_params(se) == 64 * reduced + reduced + reduced * 64 + 64


@pytest.fixture
def zero_initialisers(monkeypatch):
    """Fast construction of very large models: every initialiser returns zeros."""

    def zeros(self, shape, dtype=None):
        return keras.ops.zeros(shape, dtype=dtype or "float32")

    for cls in (keras.initializers.VarianceScaling, keras.initializers.RandomNormal):
        monkeypatch.setattr(cls, "__call__", zeros)


# Trainable parameters as the authors' TF2 code counts them for their released
# configurations at 224 px: the encoder alone, and (where given) the whole model with a
# 3-layer 128-d projection head and a 1000-class supervised head.
RELEASED = [
    (50, 1, 0.0, 23_508_032, 34_216_104),
    (50, 2, 0.0, 93_907_072, None),
    (50, 4, 0.0, 375_378_176, None),
    (50, 1, 0.0625, 35_215_584, None),
    (101, 1, 0.0625, 64_662_304, None),
    (152, 1, 0.0625, 88_940_896, None),
    (152, 2, 0.0625, 353_398_528, None),
    (152, 3, 0.0625, 794_704_160, 877_157_768),
]


@pytest.mark.parametrize("depth, width, sk_ratio, encoder, whole", RELEASED)
def test_parameter_counts_equal_the_authors(
    depth, width, sk_ratio, encoder, whole, zero_initialisers
):
    model = SimCLRModel(
        ResNet(depth, width, sk_ratio=sk_ratio, batch_norm=LOCAL_BN),
        ProjectionHead("nonlinear", proj_out_dim=128, num_proj_layers=3, batch_norm=LOCAL_BN),
        num_classes=1000,
    )
    model.build((None, 224, 224, 3))  # creates the weights, computes nothing
    assert model.encoder.output_width == 2048 * width
    assert n_params(model.encoder) == encoder
    if whole is not None:
        assert n_params(model) == whole


def test_sk_imagenet_stem_is_resnet_d_and_shortcuts_average_pool():
    model = ResNet(50, 0.25, sk_ratio=0.0625, batch_norm=LOCAL_BN)
    outputs = model(images(size=64))
    assert outputs["initial_conv"].shape == (2, 32, 32, 16)
    assert outputs["initial_max_pool"].shape == (2, 16, 16, 16)
    assert outputs["final_avg_pool"].shape == (2, 512)
    stem_kernels = [v.shape for v in model.variables if "initial_conv" in v.path]
    assert stem_kernels == [(3, 3, 3, 8), (3, 3, 8, 8), (3, 3, 8, 16)]
    block = model.block_group2.block_0
    assert block.shortcut_pool is not None and block.shortcut_conv.strides == 1
    # Also at stride 1 (the authors' code): a 2x2 "same" average pool.
    assert model.block_group1.block_0.shortcut_pool.strides == (1, 1)
    # The stem's five layers are one stage (frozen together by fine_tune_after_block=0).
    assert len(model.stages[0]) == 6


@pytest.mark.parametrize(
    "depth, sk_ratio, se_ratio",
    [(18, 0.0625, 0.25), (34, 0.0625, 0.0), (50, 0.0, 0.25), (50, 0.0625, 0.25)],
)
def test_every_depth_with_sk_and_se_trains(depth, sk_ratio, se_ratio):
    model = SimCLRModel(
        ResNet(
            depth, 0.125, cifar_stem=True, sk_ratio=sk_ratio, se_ratio=se_ratio, batch_norm=LOCAL_BN
        ),
        ProjectionHead("nonlinear", proj_out_dim=8, num_proj_layers=2, batch_norm=LOCAL_BN),
        num_classes=3,
    )
    x = np.concatenate([images(4, 16), images(4, 16, seed=1)], axis=-1)
    y = np.array([0, 1, 2, 0])
    with tf.GradientTape() as tape:
        loss = model.compute_losses(tf.constant(x), tf.constant(y), training=True)["total_loss"]
    grads = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, grads, strict=True) if g is None]
    assert not missing  # every SK / SE weight is on the loss path
    sk_layers = [la for la in model._flatten_layers() if isinstance(la, SelectiveKernelConv2D)]
    se_layers = [la for la in model._flatten_layers() if isinstance(la, SqueezeExcitation)]
    blocks = {18: 8, 34: 16, 50: 16}[depth]
    # Selective kernels only in bottleneck blocks, as in the authors' code.
    assert len(sk_layers) == (blocks if sk_ratio and depth >= 50 else 0)
    assert len(se_layers) == (blocks if se_ratio else 0)
    if depth == 18:  # and through fit's compiled train step
        model.compile(optimizer=keras.optimizers.SGD(0.05))
        history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        assert np.isfinite(history.history["total_loss"][-1])


def test_sk_se_config_round_trip_and_checkpoint(tmp_path):
    encoder = ResNet(18, 0.125, True, sk_ratio=0.0625, se_ratio=0.25, batch_norm=LOCAL_BN)
    model = SimCLRModel(encoder, num_classes=None)
    model.build((None, 16, 16, 3))
    clone = SimCLRModel.from_config(model.get_config())
    clone.build((None, 16, 16, 3))
    assert clone.get_config() == model.get_config()
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=clone).restore(path).assert_existing_objects_matched()
    x = images(2, 16)
    np.testing.assert_allclose(
        clone(x)["final_avg_pool"], model(x)["final_avg_pool"], rtol=1e-5, atol=1e-6
    )


def test_bad_ratios():
    with pytest.raises(ValueError, match="sk_ratio=1.5"):
        ResNet(50, sk_ratio=1.5)
    with pytest.raises(ValueError, match="se_ratio=-0.1"):
        ResNet(50, se_ratio=-0.1)
