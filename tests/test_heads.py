"""Projection head modes and the supervised head."""

import keras
import numpy as np
import pytest

from simclr_tf2.models.batch_norm import BatchNormSpec
from simclr_tf2.models.heads import ProjectionHead, num_head_outputs, supervised_head


def test_nonlinear_head():
    head = ProjectionHead("nonlinear", proj_out_dim=16, num_proj_layers=3)
    h = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    z, hiddens = head(h, training=True)
    assert z.shape == (4, 16)
    # h, then two hidden layers as wide as h, then z.
    assert [tuple(x.shape) for x in hiddens] == [(4, 32), (4, 32), (4, 32), (4, 16)]
    np.testing.assert_array_equal(hiddens[-1], z)
    # Hidden layers end in a ReLU, the last one does not.
    assert np.all(hiddens[1].numpy() >= 0) and np.all(hiddens[2].numpy() >= 0)
    assert np.any(z.numpy() < 0)
    # Dense + BN: hidden Dense layers have no bias (BN's beta), last BN no beta.
    paths = [v.path for v in head.trainable_variables]
    assert not any(p.endswith("dense/bias") for p in paths)
    assert "projection_head/nl_0/batch_normalization/beta" in paths
    assert "projection_head/nl_2/batch_normalization/beta" not in paths


def test_linear_head():
    head = ProjectionHead("linear", proj_out_dim=8)
    z, hiddens = head(np.ones((2, 32), np.float32), training=False)
    assert z.shape == (2, 8) and len(hiddens) == 2


def test_no_head():
    head = ProjectionHead("none")
    h = np.ones((2, 32), np.float32)
    z, hiddens = head(h)
    np.testing.assert_array_equal(z, h)
    assert len(hiddens) == 1 and not head.trainable_variables


def test_num_head_outputs_and_errors():
    assert num_head_outputs("none", 3) == 0
    assert num_head_outputs("linear", 3) == 1
    assert num_head_outputs("nonlinear", 4) == 4
    with pytest.raises(ValueError, match="proj_head_mode='mlp'"):
        ProjectionHead("mlp")
    with pytest.raises(ValueError, match="num_proj_layers=0"):
        ProjectionHead("nonlinear", num_proj_layers=0)


def test_supervised_head():
    head = supervised_head(10)
    logits = head(np.ones((3, 5), np.float32))
    assert logits.shape == (3, 10) and head.name == "head_supervised"
    zero = supervised_head(10, zero_init=True)
    np.testing.assert_array_equal(zero(np.ones((3, 5), np.float32)), 0.0)


def test_head_config_round_trip():
    head = ProjectionHead("nonlinear", 64, 2, batch_norm=BatchNormSpec(synchronized=False))
    assert ProjectionHead.from_config(head.get_config()).get_config() == head.get_config()
    assert isinstance(head, keras.layers.Layer)
