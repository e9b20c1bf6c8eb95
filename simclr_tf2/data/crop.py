"""Cropping: SimCLR's random resized crop (TensorFlow's sampler, as the authors
use it, then bicubic resize), the evaluation centre crop, and decoding only a
JPEG's crop window.

All functions are stateless in (image, seed): the same seed gives the same
window on any device and in any `tf.data` order.

This module imports nothing else from the package.
"""

from __future__ import annotations

import tensorflow as tf

# The authors' arguments to TensorFlow's sampler (google-research/simclr, data_util.py):
# the aspect range is times the view's aspect, 1 for our square views.
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 100
CROP_MIN_OBJECT_COVERED = 0.1
EVAL_CROP_PROPORTION = 0.875


def to_float(image) -> tf.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)


def crop_window(
    image_shape,
    seed,
    area_range=CROP_AREA_RANGE,
    aspect_range=CROP_ASPECT_RANGE,
    attempts: int = CROP_ATTEMPTS,
    min_object_covered: float = CROP_MIN_OBJECT_COVERED,
) -> tf.Tensor:
    """Samples a random-resized-crop window: [offset_y, offset_x, height, width].

    TensorFlow's own sampler (`tf.image.stateless_sample_distorted_bounding_box`)
    with the arguments of the authors' code: the whole image as the object box,
    of which the window covers at least `min_object_covered`; area in `area_range` (a
    fraction of the image) and aspect ratio (width / height) in `aspect_range`;
    the whole image when none of `attempts` candidates fits.

    Args:
        image_shape: (height, width, channels) of the image, e.g.
            `tf.shape(image)` or `tf.image.extract_jpeg_shape(data)`.
        seed: shape-[2] integer seed.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=min_object_covered,
        aspect_ratio_range=aspect_range,
        area_range=area_range,
        max_attempts=attempts,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.concat([begin[:2], size[:2]], 0)


def resize(image, size: int) -> tf.Tensor:
    """Bicubic resize to (size, size), clipped back into [0, 1]."""
    if image.dtype == tf.uint8:
        # Resized as it is (the kernel reads uint8), then scaled: one op fewer.
        image = tf.image.resize(image, [size, size], method="bicubic") * (1 / 255)
    else:
        image = tf.image.resize(to_float(image), [size, size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 1.0)


def random_resized_crop(image, seed, size: int) -> tf.Tensor:
    """Random crop (see `crop_window`) resized to (size, size), float32 [0, 1]."""
    window = crop_window(tf.shape(image), seed)
    image = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    return resize(image, size)


def random_resized_crops(image, crop_seeds, size: int) -> list[tf.Tensor]:
    """`random_resized_crop` of `image` for each seed (the pixels' counterpart
    of `decode_and_random_crops`)."""
    return [random_resized_crop(image, seed, size) for seed in crop_seeds]


def center_crop(image, size: int, crop_proportion: float = EVAL_CROP_PROPORTION) -> tf.Tensor:
    """Evaluation crop: the centred square of `crop_proportion` of the shorter
    side, resized to (size, size). Images of 32 px or less are only resized."""
    image = to_float(image)
    if size > 32:
        shape = tf.shape(image)
        height, width = shape[0], shape[1]
        side = tf.cast(crop_proportion * tf.cast(tf.minimum(height, width), tf.float32), tf.int32)
        image = tf.image.crop_to_bounding_box(
            image, (height - side + 1) // 2, (width - side + 1) // 2, side, side
        )
    return resize(image, size)


# ------------------------------------------------------------------ JPEG bytes


def union_window(windows) -> tf.Tensor:
    """The smallest [offset_y, offset_x, height, width] window holding all of
    `windows` (a (n, 4) tensor of such windows)."""
    top = tf.reduce_min(windows[:, :2], 0)
    bottom = tf.reduce_max(windows[:, :2] + windows[:, 2:], 0)
    return tf.concat([top, bottom - top], 0)


def jpeg_crop_windows(jpeg_bytes, crop_seeds) -> tf.Tensor:
    """The (n, 4) random crop windows of a JPEG (see `crop_window`), one per
    seed, from its header alone."""
    shape = tf.image.extract_jpeg_shape(jpeg_bytes)
    return tf.stack([crop_window(shape, crop_seed) for crop_seed in crop_seeds])


def decode_and_random_crops(jpeg_bytes, crop_seeds, size: int) -> list[tf.Tensor]:
    """Random resized crops of one JPEG, one per seed, decoding only the union
    of their windows, once (one entropy-decoding pass for both views of a pair)."""
    windows = jpeg_crop_windows(jpeg_bytes, crop_seeds)
    union = union_window(windows)
    region = tf.image.decode_and_crop_jpeg(jpeg_bytes, union, channels=3)
    return [
        resize(
            tf.slice(region, tf.concat([w[:2] - union[:2], [0]], 0), tf.concat([w[2:], [-1]], 0)),
            size,
        )
        for w in tf.unstack(windows)
    ]


def decode_and_random_crop(jpeg_bytes, seed, size: int) -> tf.Tensor:
    """Random resized crop of a JPEG, decoding only the crop window."""
    return decode_and_random_crops(jpeg_bytes, [seed], size)[0]
