"""SimCLR views: shapes, reproducibility, flip, pairs, JPEG crops, the compiled path."""

import numpy as np
import pytest
import tensorflow as tf

from simclr_tf2.data import views as V
from simclr_tf2.data.crop import resize, to_float
from tests.seeded import collect, colourful_image, many_views, seeds


@pytest.fixture(scope="module")
def colourful():
    return colourful_image()


def test_views_are_float32_in_range_with_requested_shape(colourful):
    views = many_views(colourful, 1000, image_size=24)
    assert views.dtype == np.float32 and views.shape == (1000, 24, 24, 3)
    assert views.min() >= 0.0 and views.max() <= 1.0
    big = V.simclr_view(tf.constant(colourful), tf.constant([3, 4]), image_size=64)
    assert big.shape == (64, 64, 3) and big.dtype == tf.float32


def test_same_seed_same_view_different_seed_different_view(colourful):
    image = tf.constant(colourful)
    a = V.simclr_view(image, tf.constant([5, 6]), 32)
    b = V.simclr_view(image, tf.constant([5, 6]), 32)
    c = V.simclr_view(image, tf.constant([5, 7]), 32)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.numpy() - c.numpy()).max() > 0.05


def test_flip_probability(colourful):
    views = many_views(colourful, 2000, image_size=32, crop=False, blur=False, color_distort=False)
    flipped = np.all(np.isclose(views, to_float(colourful).numpy()[:, ::-1]), axis=(1, 2, 3))
    assert flipped.mean() == pytest.approx(0.5, abs=0.03)


def test_eval_view_centre_crops_above_32px_only():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 100:] = 255  # left half black, right half white
    view = V.eval_view(image, 64).numpy()
    assert view.shape == (64, 64, 3)
    # Centre crop of 87.5% of the shorter side: 87 px square around the middle.
    assert view[:, :30].max() < 0.05 and view[:, 34:].min() > 0.95
    small = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(V.eval_view(small, 32), small / 255.0, atol=1e-6)


def test_finetune_view_is_crop_and_flip_only(colourful):
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 0] = 200  # pure red: colour distortion would change it
    views = collect(seeds(100).map(lambda s: V.finetune_view(tf.constant(image), s, 32)))
    np.testing.assert_allclose(views[..., 0], 200 / 255, atol=1e-5)
    np.testing.assert_allclose(views[..., 1:], 0.0, atol=1e-5)


def test_jpeg_view_decodes_crop_window(colourful):
    # Without chroma subsampling: libjpeg upsamples chroma differently at the
    # edge of a cropped decode, which would differ from decode-then-crop there.
    jpeg = tf.io.encode_jpeg(tf.constant(colourful), quality=100, chroma_downsampling=False)
    view = V.simclr_view_jpeg(jpeg, tf.constant([1, 2]), 32, blur=False)
    assert view.shape == (32, 32, 3)
    # Crop-decoding gives the same view as decoding then cropping.
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    same = V.simclr_view(decoded, tf.constant([1, 2]), 32, blur=False)
    np.testing.assert_allclose(view, same, atol=2e-2)


def test_compiled_and_op_by_op_paths_agree(colourful):
    # Above COMPILE_ABOVE px the steps after the crop run under XLA; below, op
    # by op. With the same draws both must give the same view.
    image = resize(colourful, 64)
    for i in range(40):
        draws = [V.ViewDraws.from_seed([i, 3])]
        compiled = V.finish_views([image], draws, 64, compiled=True)
        plain = V.finish_views([image], draws, 64, compiled=False)
        np.testing.assert_allclose(compiled, plain, atol=2e-5)


def test_view_draws_are_named_fields_of_one_draw():
    seed = tf.constant([8, 1])
    draws = V.ViewDraws.from_seed(seed)
    flat = tf.nest.flatten(draws)
    assert len(flat) == V.ViewDraws.SIZE == 10
    np.testing.assert_array_equal(flat, tf.random.stateless_uniform([10], seed))
    assert draws.color.jitter.order is flat[7] and draws.blur.sigma is flat[9]


def test_view_is_the_public_steps_in_order(colourful):
    # simclr_view runs crop, then flip, color_distortion and random_blur with
    # its named draws: the same functions a user calls (op by op at 32 px: equal).
    from simclr_tf2.data.blur import random_blur
    from simclr_tf2.data.color import color_distortion
    from simclr_tf2.data.crop import random_resized_crop

    for i in range(20):
        seed = tf.constant([i, 5])
        crop_seed, draws_seed = V.view_seeds(seed)
        draws = V.ViewDraws.from_seed(draws_seed)
        x = random_resized_crop(colourful, crop_seed, 32)
        x = tf.cond(draws.flip_coin < 0.5, lambda x=x: x[:, ::-1], lambda x=x: x)
        x = color_distortion(x, draws.color, 0.7)
        x = tf.clip_by_value(random_blur(x, draws.blur, 32), 0.0, 1.0)
        np.testing.assert_array_equal(V.simclr_view(colourful, seed, 32, 0.7), x)


def test_pair_is_two_views(colourful):
    seed = tf.constant([4, 9])
    seed1, seed2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    for size in (32, 64):  # op by op, and compiled
        pair = V.simclr_pair(colourful, seed, size).numpy()
        assert pair.shape == (size, size, 6)
        np.testing.assert_allclose(pair[..., :3], V.simclr_view(colourful, seed1, size), atol=1e-6)
        np.testing.assert_allclose(pair[..., 3:], V.simclr_view(colourful, seed2, size), atol=1e-6)
    # JPEG pairs decode the union of the two windows once: the same views.
    jpeg = tf.io.encode_jpeg(tf.constant(colourful), quality=100, chroma_downsampling=False)
    decoded = tf.io.decode_jpeg(jpeg, channels=3)
    np.testing.assert_allclose(
        V.simclr_pair_jpeg(jpeg, seed, 64), V.simclr_pair(decoded, seed, 64), atol=2e-2
    )
