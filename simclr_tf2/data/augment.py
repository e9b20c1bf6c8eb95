"""SimCLR's data augmentations as pure TensorFlow functions of (image, seed).

Every random choice comes from stateless ops keyed by `seed` (a shape-[2]
integer tensor), so the same image and seed always give the same view, on any
device and in any `tf.data` order. `simclr_view` composes the paper's
pipeline: random resized crop + flip, colour distortion (jitter with p=0.8,
grayscale with p=0.2), then Gaussian blur with p=0.5.

This module imports nothing else from the package.
"""

from __future__ import annotations

import math

import tensorflow as tf

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 100
EVAL_CROP_PROPORTION = 0.875
BLUR_SIGMA_RANGE = (0.1, 2.0)


def _split(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _coin(seed, p: float) -> tf.Tensor:
    return tf.random.stateless_uniform([], seed) < p


def to_float(image) -> tf.Tensor:
    """uint8 [0, 255] or float [0, 1] -> float32 [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)


# --------------------------------------------------------------------- cropping


def crop_window(
    image_shape,
    seed,
    area_range=CROP_AREA_RANGE,
    aspect_range=CROP_ASPECT_RANGE,
    attempts: int = CROP_ATTEMPTS,
) -> tf.Tensor:
    """Samples a random-resized-crop window: [offset_y, offset_x, height, width].

    Area uniform in `area_range` (a fraction of the image), aspect ratio
    (width / height) log-uniform in `aspect_range`; the first of `attempts`
    candidates that fits in the image is taken. If none fits, the centre crop
    of the whole image clamped to the aspect range is used.

    Args:
        image_shape: (height, width, ...) of the image, e.g. `tf.shape(image)`
            or `tf.image.extract_jpeg_shape(data)`.
        seed: shape-[2] integer seed.
    """
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)
    area_seed, ratio_seed, y_seed, x_seed = _split(seed, 4)
    area = height * width
    target_area = area * tf.random.stateless_uniform(
        [attempts], area_seed, area_range[0], area_range[1]
    )
    log_ratio = tf.random.stateless_uniform(
        [attempts], ratio_seed, math.log(aspect_range[0]), math.log(aspect_range[1])
    )
    ratio = tf.exp(log_ratio)
    crop_w = tf.round(tf.sqrt(target_area * ratio))
    crop_h = tf.round(tf.sqrt(target_area / ratio))
    fits = (crop_w >= 1) & (crop_h >= 1) & (crop_w <= width) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32))

    image_ratio = width / height
    fallback_w = tf.where(
        image_ratio < aspect_range[0],
        width,
        tf.where(image_ratio > aspect_range[1], tf.round(height * aspect_range[1]), width),
    )
    fallback_h = tf.where(
        image_ratio < aspect_range[0],
        tf.round(width / aspect_range[0]),
        height,
    )
    found = tf.reduce_any(fits)
    crop_h = tf.where(found, crop_h[first], fallback_h)
    crop_w = tf.where(found, crop_w[first], fallback_w)

    offset_y = tf.floor(tf.random.stateless_uniform([], y_seed) * (height - crop_h + 1))
    offset_x = tf.floor(tf.random.stateless_uniform([], x_seed) * (width - crop_w + 1))
    offset_y = tf.where(found, offset_y, tf.floor((height - crop_h) / 2))
    offset_x = tf.where(found, offset_x, tf.floor((width - crop_w) / 2))
    return tf.cast(tf.stack([offset_y, offset_x, crop_h, crop_w]), tf.int32)


def resize(image, size: int) -> tf.Tensor:
    """Bicubic resize to (size, size), clipped back into [0, 1]."""
    image = tf.image.resize(to_float(image), [size, size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 1.0)


def random_resized_crop(image, seed, size: int) -> tf.Tensor:
    """Random crop (see `crop_window`) resized to (size, size), float32 [0, 1]."""
    window = crop_window(tf.shape(image), seed)
    image = tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])
    return resize(image, size)


def decode_and_random_crop(jpeg_bytes, seed, size: int) -> tf.Tensor:
    """Random resized crop of a JPEG, decoding only the crop window."""
    window = crop_window(tf.image.extract_jpeg_shape(jpeg_bytes), seed)
    image = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=3)
    return resize(image, size)


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


# ---------------------------------------------------------------------- colour


def _brightness(image, delta, seed):
    # Multiplicative, as in SimCLR v2's code: factor in [1 - delta, 1 + delta].
    factor = tf.random.stateless_uniform([], seed, max(1.0 - delta, 0.0), 1.0 + delta)
    return image * factor


def _contrast(image, delta, seed):
    return tf.image.stateless_random_contrast(image, max(1.0 - delta, 0.0), 1.0 + delta, seed)


def _saturation(image, delta, seed):
    return tf.image.stateless_random_saturation(image, max(1.0 - delta, 0.0), 1.0 + delta, seed)


def _hue(image, delta, seed):
    return tf.image.stateless_random_hue(image, min(delta, 0.5), seed)


def color_jitter(image, seed, strength: float = 1.0) -> tf.Tensor:
    """Brightness, contrast, saturation (each 0.8 s) and hue (0.2 s) in a random
    order, clipped to [0, 1] after each."""
    if strength <= 0:
        return image
    order_seed, *op_seeds = _split(seed, 5)
    ops = [
        (_brightness, 0.8 * strength),
        (_contrast, 0.8 * strength),
        (_saturation, 0.8 * strength),
        (_hue, 0.2 * strength),
    ]
    order = tf.argsort(tf.random.stateless_uniform([4], order_seed))
    for position in range(4):
        branches = [
            (lambda fn=fn, delta=delta, s=s, x=image: tf.clip_by_value(fn(x, delta, s), 0.0, 1.0))
            for (fn, delta), s in zip(ops, op_seeds, strict=True)
        ]
        image = tf.switch_case(order[position], branches)
        image.set_shape([None, None, 3])
    return image


def to_grayscale(image) -> tf.Tensor:
    """Grayscale (ITU-R 601 luma, as tf.image.rgb_to_grayscale), in three channels."""
    luma = tf.reduce_sum(image * tf.constant([0.2989, 0.587, 0.114]), axis=-1, keepdims=True)
    return tf.broadcast_to(luma, tf.shape(image))


def color_distortion(image, seed, strength: float = 1.0) -> tf.Tensor:
    """Colour jitter with p=0.8, then grayscale with p=0.2."""
    jitter_coin, jitter_seed, gray_coin = _split(seed, 3)
    image = tf.cond(
        _coin(jitter_coin, 0.8), lambda: color_jitter(image, jitter_seed, strength), lambda: image
    )
    return tf.cond(_coin(gray_coin, 0.2), lambda: to_grayscale(image), lambda: image)


# ------------------------------------------------------------------------ blur


def blur_kernel_size(side: int) -> int:
    """About 10% of the image side, odd."""
    return 2 * ((side // 10) // 2) + 1


# Taps farther than this many sigmas from the centre weigh less than exp(-8) of
# it (under 1e-4 of the kernel's mass in all) and are dropped: with sigma <= 2 a
# 23-tap kernel (10% of 224 px) then costs what its ~17 useful taps cost.
BLUR_TRUNCATE_SIGMAS = 4.0


def _blur_1d(image, kernel, axis: int):
    radius = (kernel.shape[0] - 1) // 2
    pad = [[0, 0], [0, 0], [0, 0], [0, 0]]
    pad[axis + 1] = [radius, radius]
    shape = [1, 1, 1, 1]
    shape[axis] = kernel.shape[0]
    channels = image.shape[-1] or 3
    filters = tf.tile(tf.reshape(kernel, shape), [1, 1, channels, 1])
    padded = tf.pad(image, pad, "REFLECT")
    return tf.nn.depthwise_conv2d(padded, filters, [1, 1, 1, 1], "VALID")


def gaussian_blur(image, sigma, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur of an (H, W, C) image, reflecting at the borders.

    The kernel spans `kernel_size` taps, truncated to 4 sigma on each side
    (see `BLUR_TRUNCATE_SIGMAS`) and normalised to sum to 1.
    """
    max_radius = kernel_size // 2
    if max_radius == 0:
        return image
    sigma = tf.cast(sigma, tf.float32)
    needed = tf.cast(tf.math.ceil(BLUR_TRUNCATE_SIGMAS * sigma), tf.int32)
    radius_index = tf.clip_by_value(needed, 1, max_radius) - 1
    batch = tf.expand_dims(image, 0)

    def blur_with_radius(radius):
        def blur():
            x = tf.range(-radius, radius + 1, dtype=tf.float32)
            kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
            kernel = kernel / tf.reduce_sum(kernel)
            return _blur_1d(_blur_1d(batch, kernel, 0), kernel, 1)[0]

        return blur

    branches = [blur_with_radius(r) for r in range(1, max_radius + 1)]
    blurred = tf.switch_case(radius_index, branches)
    blurred.set_shape(image.shape)
    return blurred


def random_blur(image, seed, size: int, sigma_range=BLUR_SIGMA_RANGE) -> tf.Tensor:
    """Gaussian blur with p=0.5, sigma uniform in `sigma_range` drawn per image."""
    coin_seed, sigma_seed = _split(seed, 2)
    sigma = tf.random.stateless_uniform([], sigma_seed, *sigma_range)
    return tf.cond(
        _coin(coin_seed, 0.5),
        lambda: gaussian_blur(image, sigma, blur_kernel_size(size)),
        lambda: image,
    )


# ----------------------------------------------------------------------- views


def use_blur_for(image_size: int, use_blur: bool = True) -> bool:
    """Blur is on above 32 px (if asked for) and always off at 32 px or less."""
    return bool(use_blur) and image_size > 32


def simclr_view(
    image,
    seed,
    image_size: int,
    color_jitter_strength: float = 1.0,
    blur: bool = True,
    crop: bool = True,
    flip: bool = True,
    color_distort: bool = True,
) -> tf.Tensor:
    """One SimCLR view of `image` (H, W, 3, uint8 or float in [0, 1]).

    Random resized crop to `image_size`, horizontal flip (p=0.5), colour
    distortion of strength `color_jitter_strength`, Gaussian blur (p=0.5).
    Pass `tf.image.decode_*`'d pixels; for JPEG bytes use `simclr_view_jpeg`.

    Returns:
        float32 (image_size, image_size, 3) in [0, 1].
    """
    crop_seed, rest_seed = _split(seed, 2)
    if crop:
        view = random_resized_crop(image, crop_seed, image_size)
    else:
        view = resize(image, image_size)
    return _after_crop(
        view, rest_seed, image_size, color_jitter_strength, blur, flip, color_distort
    )


def simclr_view_jpeg(
    jpeg_bytes,
    seed,
    image_size: int,
    color_jitter_strength: float = 1.0,
    blur: bool = True,
    flip: bool = True,
    color_distort: bool = True,
) -> tf.Tensor:
    """`simclr_view` of encoded JPEG bytes, decoding only the crop window."""
    crop_seed, rest_seed = _split(seed, 2)
    view = decode_and_random_crop(jpeg_bytes, crop_seed, image_size)
    return _after_crop(
        view, rest_seed, image_size, color_jitter_strength, blur, flip, color_distort
    )


def _after_crop(view, seed, image_size, color_jitter_strength, blur, flip, color_distort):
    flip_seed, color_seed, blur_seed = _split(seed, 3)
    if flip:
        view = tf.cond(_coin(flip_seed, 0.5), lambda: tf.image.flip_left_right(view), lambda: view)
    if color_distort:
        view = color_distortion(view, color_seed, color_jitter_strength)
    if blur:
        view = random_blur(view, blur_seed, image_size)
    view = tf.clip_by_value(view, 0.0, 1.0)
    view.set_shape([image_size, image_size, 3])
    return view


def finetune_view(image, seed, image_size: int) -> tf.Tensor:
    """Fine-tuning augmentation: random resized crop and flip only."""
    return simclr_view(image, seed, image_size, blur=False, color_distort=False)


def eval_view(image, image_size: int) -> tf.Tensor:
    """Evaluation preprocessing: centre crop (above 32 px) and resize."""
    view = center_crop(image, image_size)
    view.set_shape([image_size, image_size, 3])
    return view
