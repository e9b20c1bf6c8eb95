"""Gaussian blur: against NumPy, its probability, sigma drawn per image."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data.blur import blur_kernel_size, gaussian_blur, random_blur, use_blur_for
from simclr_tf2.data.crop import resize
from tests.seeded import changed, collect, colourful_image, many_views, seeds


@pytest.fixture(scope="module")
def colourful():
    return colourful_image()


def test_blur_probability_and_off_at_32px(colourful):
    big = resize(colourful, 64)
    # A blur with sigma near 0.1 changes nothing measurable in float32 (the
    # neighbours' weights are ~exp(-50)), so the coin is measured with sigma >= 1.
    blurred = collect(seeds(4000).map(lambda s: random_blur(big, s, 64, sigma_range=(1.0, 2.0))))
    assert changed(blurred, big.numpy()).mean() == pytest.approx(0.5, abs=0.03)
    # The full view blurs at the same rate; the faint blurs are simply invisible.
    views = many_views(colourful, 2000, image_size=64, crop=False, flip=False, color_distort=False)
    assert 0.4 < changed(views, big.numpy()).mean() <= 0.5 + 0.03
    assert not use_blur_for(32) and use_blur_for(64) and not use_blur_for(64, False)


def test_blur_sigma_is_drawn_per_image():
    # Impulse images: the blurred centre value is a decreasing function of sigma,
    # so distinct values mean distinct sigmas.
    impulse = np.zeros((64, 64, 3), np.float32)
    impulse[32, 32] = 1.0
    centres = collect(seeds(400).map(lambda s: random_blur(tf.constant(impulse), s, 64)[32, 32, 0]))
    blurred = centres[centres < 1.0]
    assert 150 < len(blurred) < 250
    assert len(np.unique(np.round(blurred, 6))) > 0.9 * len(blurred)


def test_blur_matches_numpy():
    image = np.random.default_rng(1).random((20, 16, 3)).astype(np.float32)
    sigma, size = 1.3, 5
    radius = size // 2
    x = np.arange(-radius, radius + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    padded = np.pad(image, [(radius, radius), (radius, radius), (0, 0)], mode="reflect")
    rows = sum(k[i] * padded[i : i + 20] for i in range(size))
    expected = sum(k[j] * rows[:, j : j + 16] for j in range(size))
    np.testing.assert_allclose(gaussian_blur(image, sigma, size), expected, atol=1e-5)
    # A 23-tap kernel (224 px) is truncated at 4 sigma: under 1e-4 of the mass.
    big = np.random.default_rng(2).random((40, 40, 3)).astype(np.float32)
    for sigma in (0.3, 1.0, 2.0):
        x = np.arange(-11, 12)
        k = np.exp(-(x**2) / (2 * sigma**2))
        k /= k.sum()
        padded = np.pad(big, [(11, 11), (11, 11), (0, 0)], mode="reflect")
        rows = sum(k[i] * padded[i : i + 40] for i in range(23))
        full = sum(k[j] * rows[:, j : j + 40] for j in range(23))
        np.testing.assert_allclose(gaussian_blur(big, sigma, 23), full, atol=2e-4)
    assert blur_kernel_size(224) == 23 and blur_kernel_size(96) == 9
    assert blur_kernel_size(32) % 2 == 1
