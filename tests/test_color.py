"""Colour distortion: jitter and grayscale probabilities (by their effect), ranges,
named draws."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data.color import (
    ColorDraws,
    JitterDraws,
    color_distortion,
    color_jitter,
    to_grayscale,
)
from simclr_tf2.data.crop import to_float
from tests.seeded import changed, collect, colourful_image, is_gray, many_views, seeds


@pytest.fixture(scope="module")
def colourful():
    return colourful_image()


def test_grayscale_probability(colourful):
    views = many_views(
        colourful,
        4000,
        image_size=32,
        crop=False,
        flip=False,
        blur=False,
        color_jitter_strength=0.0,
    )
    assert is_gray(views).mean() == pytest.approx(0.2, abs=0.03)


def test_jitter_probability(colourful):
    views = many_views(colourful, 4000, image_size=32, crop=False, flip=False, blur=False)
    original = to_float(colourful).numpy()
    colour = ~is_gray(views)
    assert changed(views[colour], original).mean() == pytest.approx(0.8, abs=0.03)


def test_jitter_strength_zero_is_identity_and_ranges_hold(colourful):
    image = to_float(colourful)
    np.testing.assert_array_equal(color_jitter(image, tf.constant([1, 1]), 0.0), image)
    # A mid-gray image only changes brightness (contrast, saturation, hue keep it
    # gray): the multiplicative factor is within [1 - 0.8 s, 1 + 0.8 s].
    gray = tf.fill([8, 8, 3], 0.5)
    strength = 0.5
    factors = collect(seeds(500).map(lambda s: color_jitter(gray, s, strength)[0, 0, 0] / 0.5))
    assert factors.min() >= 1 - 0.8 * strength - 1e-5
    assert factors.max() <= 1 + 0.8 * strength + 1e-5
    assert factors.max() - factors.min() > 0.6  # the whole range is used


def test_named_draws_give_what_the_seed_gives(colourful):
    image = to_float(colourful)
    for i in range(10):
        seed = tf.constant([i, 2])
        draws = ColorDraws.from_seed(seed)
        np.testing.assert_array_equal(color_distortion(image, seed), color_distortion(image, draws))
        np.testing.assert_array_equal(
            color_jitter(image, seed), color_jitter(image, JitterDraws.from_seed(seed))
        )


def test_planar_form_matches_tf_image(colourful):
    # The planar ops are written by hand for XLA; tf.image's are the reference.
    # 2e-5: float32 rounding of the HSV round trip.
    image = to_float(colourful)
    planar = tf.transpose(image, [2, 0, 1])
    for i in range(30):
        seed = tf.constant([i, 9])
        expected = color_jitter(image, seed, 1.0)
        got = tf.transpose(color_jitter(planar, seed, 1.0, planar=True), [1, 2, 0])
        np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_allclose(
        tf.transpose(to_grayscale(planar, planar=True), [1, 2, 0]), to_grayscale(image), atol=1e-6
    )
