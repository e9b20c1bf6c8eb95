"""SimCLR augmentations: ranges, probabilities (by their effect), reproducibility."""

import math

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data import augment as A


def seeds(n, offset=0):
    return tf.data.Dataset.range(offset, offset + n).map(
        lambda i: tf.stack([tf.cast(i, tf.int32), tf.constant(7, tf.int32)])
    )


def collect(dataset):
    return np.stack(list(dataset.as_numpy_iterator()))


def many_views(image, n, **kwargs):
    image = tf.constant(image)
    ds = seeds(n).map(
        lambda s: A.simclr_view(image, s, **kwargs), num_parallel_calls=tf.data.AUTOTUNE
    )
    return collect(ds)


@pytest.fixture(scope="module")
def colourful():
    # Random colours: never gray, and every op visibly changes it.
    return (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)


def expected_crop_area(area_range=A.CROP_AREA_RANGE, aspect_range=A.CROP_ASPECT_RANGE):
    """E[area fraction] of an accepted crop of a square image, by quadrature.

    (area a, log-ratio u) is uniform; a crop fits a square iff a <= min(r, 1/r)
    = exp(-|u|), so E[a] = int int a da du / int int da du over that region.
    """
    u = np.linspace(math.log(aspect_range[0]), math.log(aspect_range[1]), 20001)
    top = np.minimum(np.exp(-np.abs(u)), area_range[1])
    lo = area_range[0]
    numerator = np.trapezoid((top**2 - lo**2) / 2, u)
    denominator = np.trapezoid(top - lo, u)
    return numerator / denominator


def test_crop_areas_and_aspects():
    shape = tf.constant([1000, 1000, 3])  # large, so pixel rounding is negligible
    windows = collect(seeds(4000).map(lambda s: A.crop_window(shape, s)))
    _, _, h, w = windows.T
    area = h * w / 1e6
    assert area.min() >= 0.08 - 1e-3 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 0.75 - 2e-3 and ratio.max() <= 4 / 3 + 2e-3
    # Log-uniform aspect: the mean of log(ratio) is ~0.
    assert abs(np.mean(np.log(ratio))) < 0.01
    # Standard error of the mean area over 4000 draws is ~0.004.
    assert np.mean(area) == pytest.approx(expected_crop_area(), abs=0.012)
    offsets_ok = (windows[:, 0] + h <= 1000) & (windows[:, 1] + w <= 1000)
    assert offsets_ok.all() and (windows[:, :2] >= 0).all()


def test_crop_falls_back_to_clamped_centre_crop():
    # A 10x1000 strip: no candidate with aspect <= 4/3 and area >= 8% fits.
    window = A.crop_window(tf.constant([10, 1000, 3]), tf.constant([1, 2])).numpy()
    assert list(window) == [0, (1000 - 13) // 2, 10, 13]


def test_views_are_float32_in_range_with_requested_shape(colourful):
    views = many_views(colourful, 1000, image_size=24)
    assert views.dtype == np.float32 and views.shape == (1000, 24, 24, 3)
    assert views.min() >= 0.0 and views.max() <= 1.0
    big = A.simclr_view(tf.constant(colourful), tf.constant([3, 4]), image_size=64)
    assert big.shape == (64, 64, 3) and big.dtype == tf.float32


def test_same_seed_same_view_different_seed_different_view(colourful):
    image = tf.constant(colourful)
    a = A.simclr_view(image, tf.constant([5, 6]), 32)
    b = A.simclr_view(image, tf.constant([5, 6]), 32)
    c = A.simclr_view(image, tf.constant([5, 7]), 32)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.numpy() - c.numpy()).max() > 0.05


def is_gray(views):
    return np.all(views[..., 0] == views[..., 1], axis=(1, 2)) & np.all(
        views[..., 1] == views[..., 2], axis=(1, 2)
    )


def changed(views, original):
    return np.abs(views - original[None]).max(axis=(1, 2, 3)) > 1e-4


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
    original = A.to_float(colourful).numpy()
    colour = ~is_gray(views)
    assert changed(views[colour], original).mean() == pytest.approx(0.8, abs=0.03)


def test_blur_probability_and_off_at_32px(colourful):
    big = A.resize(colourful, 64)
    # A blur with sigma near 0.1 changes nothing measurable in float32 (the
    # neighbours' weights are ~exp(-50)), so the coin is measured with sigma >= 1.
    blurred = collect(seeds(4000).map(lambda s: A.random_blur(big, s, 64, sigma_range=(1.0, 2.0))))
    assert changed(blurred, big.numpy()).mean() == pytest.approx(0.5, abs=0.03)
    # The full view blurs at the same rate; the faint blurs are simply invisible.
    views = many_views(colourful, 2000, image_size=64, crop=False, flip=False, color_distort=False)
    assert 0.4 < changed(views, big.numpy()).mean() <= 0.5 + 0.03
    assert not A.use_blur_for(32) and A.use_blur_for(64) and not A.use_blur_for(64, False)


def test_blur_sigma_is_drawn_per_image():
    # Impulse images: the blurred centre value is a decreasing function of sigma,
    # so distinct values mean distinct sigmas.
    impulse = np.zeros((64, 64, 3), np.float32)
    impulse[32, 32] = 1.0
    centres = collect(
        seeds(400).map(lambda s: A.random_blur(tf.constant(impulse), s, 64)[32, 32, 0])
    )
    blurred = centres[centres < 1.0]
    assert 150 < len(blurred) < 250
    assert len(np.unique(np.round(blurred, 6))) > 0.9 * len(blurred)


def test_flip_probability(colourful):
    views = many_views(colourful, 2000, image_size=32, crop=False, blur=False, color_distort=False)
    flipped = np.all(np.isclose(views, A.to_float(colourful).numpy()[:, ::-1]), axis=(1, 2, 3))
    assert flipped.mean() == pytest.approx(0.5, abs=0.03)


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
    np.testing.assert_allclose(A.gaussian_blur(image, sigma, size), expected, atol=1e-5)
    # A 23-tap kernel (224 px) is truncated at 4 sigma: under 1e-4 of the mass.
    big = np.random.default_rng(2).random((40, 40, 3)).astype(np.float32)
    for sigma in (0.3, 1.0, 2.0):
        x = np.arange(-11, 12)
        k = np.exp(-(x**2) / (2 * sigma**2))
        k /= k.sum()
        padded = np.pad(big, [(11, 11), (11, 11), (0, 0)], mode="reflect")
        rows = sum(k[i] * padded[i : i + 40] for i in range(23))
        full = sum(k[j] * rows[:, j : j + 40] for j in range(23))
        np.testing.assert_allclose(A.gaussian_blur(big, sigma, 23), full, atol=2e-4)
    assert A.blur_kernel_size(224) == 23 and A.blur_kernel_size(96) == 9
    assert A.blur_kernel_size(32) % 2 == 1


def test_jitter_strength_zero_is_identity_and_ranges_hold(colourful):
    image = A.to_float(colourful)
    np.testing.assert_array_equal(A.color_jitter(image, tf.constant([1, 1]), 0.0), image)
    # A mid-gray image only changes brightness (contrast, saturation, hue keep it
    # gray): the multiplicative factor is within [1 - 0.8 s, 1 + 0.8 s].
    gray = tf.fill([8, 8, 3], 0.5)
    strength = 0.5
    factors = collect(seeds(500).map(lambda s: A.color_jitter(gray, s, strength)[0, 0, 0] / 0.5))
    assert factors.min() >= 1 - 0.8 * strength - 1e-5
    assert factors.max() <= 1 + 0.8 * strength + 1e-5
    assert factors.max() - factors.min() > 0.6  # the whole range is used


def test_eval_view_centre_crops_above_32px_only():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 255  # left half black, right half white
    view = A.eval_view(image, 64).numpy()
    assert view.shape == (64, 64, 3)
    # Centre crop of 87.5% of the shorter side: 87 px square around the middle.
    assert view[:, :30].max() < 0.05 and view[:, 34:].min() > 0.95
    small = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(A.eval_view(small, 32), small / 255.0, atol=1e-6)


def test_finetune_view_is_crop_and_flip_only(colourful):
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 200  # pure red: colour distortion would change it
    views = collect(seeds(100).map(lambda s: A.finetune_view(tf.constant(image), s, 32)))
    np.testing.assert_allclose(views[..., 0], 200 / 255, atol=1e-5)
    np.testing.assert_allclose(views[..., 1:], 0.0, atol=1e-5)


def test_jpeg_view_decodes_crop_window(colourful):
    # Without chroma subsampling: libjpeg upsamples chroma differently at the
    # edge of a cropped decode, which would differ from decode-then-crop there.
    jpeg = tf.io.encode_jpeg(tf.constant(colourful), quality=100, chroma_downsampling=False)
    view = A.simclr_view_jpeg(jpeg, tf.constant([1, 2]), 32, blur=False)
    assert view.shape == (32, 32, 3)
    # Crop-decoding gives the same view as decoding then cropping.
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    same = A.simclr_view(decoded, tf.constant([1, 2]), 32, blur=False)
    np.testing.assert_allclose(view, same, atol=2e-2)


def test_compiled_and_op_by_op_paths_agree(colourful):
    # Above COMPILE_ABOVE px the steps after the crop run under XLA; below, op
    # by op. With the same draws both must give the same view.
    image = A.resize(colourful, 64)
    for i in range(40):
        draws = [tf.random.stateless_uniform([10], [i, 3])]
        args = ([image], draws, 64, 1.0, True, True, True)
        compiled = A._finish_views_compiled(*args, True)
        plain = A._finish_views(*args, False)
        np.testing.assert_allclose(compiled, plain, atol=2e-5)


def test_pair_is_two_views(colourful):
    seed = tf.constant([4, 9])
    seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    for size in (32, 64):  # op by op, and compiled
        pair = A.simclr_pair(colourful, seed, size).numpy()
        assert pair.shape == (size, size, 6)
        np.testing.assert_allclose(pair[..., :3], A.simclr_view(colourful, seed1, size), atol=1e-6)
        np.testing.assert_allclose(pair[..., 3:], A.simclr_view(colourful, seed2, size), atol=1e-6)
    # JPEG pairs decode the union of the two windows once: the same views.
    jpeg = tf.io.encode_jpeg(tf.constant(colourful), quality=100, chroma_downsampling=False)
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    np.testing.assert_allclose(
        A.simclr_pair_jpeg(jpeg, seed, 64), A.simclr_pair(decoded, seed, 64), atol=2e-2
    )
