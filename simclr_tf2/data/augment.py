"""SimCLR's data augmentations as pure TensorFlow functions of (image, seed).

Every random choice comes from stateless ops keyed by `seed` (a shape-[2]
integer tensor), so the same image and seed always give the same view, on any
device and in any `tf.data` order. `simclr_view` composes the paper's
pipeline: random resized crop + flip, colour distortion (jitter with p=0.8,
grayscale with p=0.2), then Gaussian blur with p=0.5; `simclr_pair` makes the
two views of an image (from JPEG bytes, with one decode for both).

Above 32 px (`COMPILE_ABOVE`) the steps after the crop run as one XLA-compiled
function on planar views; at 32 px and below, op by op. Both give the same
views for the same seed, to float rounding.

This module imports nothing else from the package.
"""

from __future__ import annotations

import itertools
import math

import tensorflow as tf

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 100
EVAL_CROP_PROPORTION = 0.875
BLUR_SIGMA_RANGE = (0.1, 2.0)


def _split(seed, n: int):
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _pair_seeds(seed):
    """(crop seeds, rest seeds) of the two views of a pair: view i of
    `simclr_pair(image, seed)` is `simclr_view(image, seed_i)`."""
    seeds = [_split(view_seed, 2) for view_seed in _split(seed, 2)]
    return [crop for crop, _ in seeds], [rest for _, rest in seeds]


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
    # Written as few ops on [height, width] pairs: in a tf.data map each op call
    # costs microseconds, more than the arithmetic on 100 candidates.
    hw = tf.cast(image_shape[:2], tf.float32)
    # One draw for everything: areas, log-ratios, then the two offsets.
    u = tf.random.stateless_uniform([2 * attempts + 2], seed)
    log_area = tf.math.log(area_range[0] + (area_range[1] - area_range[0]) * u[:attempts])
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    log_ratio = log_lo + (log_hi - log_lo) * u[attempts : 2 * attempts]
    # [h, w] = sqrt(target_area / ratio), sqrt(target_area * ratio).
    log_hw = tf.stack([log_area - log_ratio, log_area + log_ratio], axis=1)
    candidates = tf.round(tf.exp(0.5 * (log_hw + tf.math.log(hw[0] * hw[1]))))
    fits = tf.reduce_all((candidates >= 1) & (candidates <= hw), axis=1)
    # The fallback, last and always fitting: the whole image clamped to the
    # aspect range, [min(H, round(W / lo)), min(W, round(H * hi))].
    limits = tf.round(tf.reverse(hw, [0]) * [1 / aspect_range[0], aspect_range[1]])
    fallback = tf.minimum(hw, limits)
    candidates = tf.concat([candidates, fallback[None]], 0)
    first = tf.argmax(tf.concat([tf.cast(fits, tf.int32), [1]], 0))
    size = candidates[first]
    free = hw - size
    # A uniform offset for a sampled crop; the fallback is centred.
    offset = tf.floor(tf.where(first < attempts, u[-2:] * (free + 1), free / 2))
    return tf.cast(tf.concat([offset, size], 0), tf.int32)


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


def decode_and_random_crop(jpeg_bytes, seed, size: int) -> tf.Tensor:
    """Random resized crop of a JPEG, decoding only the crop window."""
    return decode_and_random_crops(jpeg_bytes, [seed], size)[0]


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
#
# Random choices are drawn as one vector of uniforms per view and handed down
# as scalars: in a tf.data map each op call (a draw, a split) costs more than
# the arithmetic on a 32x32 image. Coins branch (tf.cond) rather than compute
# both sides and select, which measured slower even at 32 px.

# The 24 orders of the four jitter ops, chosen with one uniform (one branch
# per view instead of one per position).
_JITTER_ORDERS = tuple(itertools.permutations(range(4)))


def _between(u, low: float, high: float) -> tf.Tensor:
    """Maps a uniform [0, 1) draw onto [low, high)."""
    return low + (high - low) * u


def _maybe(coin, fn, image) -> tf.Tensor:
    """fn(image) where `coin` is true, else image."""
    result = tf.cond(coin, lambda: fn(image), lambda: image)
    result.set_shape(image.shape)
    return result


# The compiled path works on planar (C, H, W) views: each op is then a few
# elementwise passes over contiguous planes, which XLA vectorises (on (H, W, 3)
# the per-pixel max/min over 3 channels is not). These give what tf.image's
# ops give on (H, W, C), to float rounding (tests/test_augment.py).


def _contrast_planar(x, factor):
    mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    return (x - mean) * factor + mean


def _value_and_chroma(x):
    r, g, b = x[0], x[1], x[2]
    value = tf.maximum(tf.maximum(r, g), b)
    return value, value - tf.minimum(tf.minimum(r, g), b)


def _saturation_planar(x, factor):
    # In HSV, c = v (1 - s f_c(h)); scaling s by `factor` (clamped to [0, 1])
    # gives c' = v - (v - c) s'/s, with s'/s = min(factor, v / (v - min)).
    value, chroma = _value_and_chroma(x)
    return value - (value - x) * tf.minimum(factor, tf.math.divide_no_nan(value, chroma))


def _hue_planar(x, delta):
    # Hue in sextants [0, 6), shifted by 6 delta; then the standard HSV -> RGB:
    # c_n = v - chroma * clip(min(k, 4 - k), 0, 1), k = (n + hue) mod 6, n = 5, 3, 1.
    value, chroma = _value_and_chroma(x)
    r, g, b = x[0], x[1], x[2]
    inverse = tf.math.divide_no_nan(1.0, chroma)
    hue = tf.where(
        value == r,
        (g - b) * inverse,
        tf.where(value == g, 2.0 + (b - r) * inverse, 4.0 + (r - g) * inverse),
    )
    k = tf.constant([5.0, 3.0, 1.0])[:, None, None] + (hue + 6.0 * delta)
    k = k - 6.0 * tf.floor(k * (1.0 / 6.0))
    return value - chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)


def _grayscale_planar(x):
    luma = LUMA[0] * x[0] + LUMA[1] * x[1] + LUMA[2] * x[2]
    return tf.broadcast_to(luma, tf.shape(x))


def _jitter_ops(u, strength: float, planar: bool = False):
    """The four jitter ops given the brightness, contrast, saturation and hue
    draws, for (H, W, C) images or, `planar`, (C, H, W) ones."""
    delta = 0.8 * strength  # of brightness, contrast and saturation
    low, high = max(1.0 - delta, 0.0), 1.0 + delta
    h = min(0.2 * strength, 0.5)
    # Brightness is multiplicative, as in SimCLR v2's code.
    brightness = _between(u[0], low, high)
    contrast = _between(u[1], low, high)
    saturation = _between(u[2], low, high)
    hue = _between(u[3], -h, h)
    if planar:
        return (
            lambda x: x * brightness,
            lambda x: _contrast_planar(x, contrast),
            lambda x: _saturation_planar(x, saturation),
            lambda x: _hue_planar(x, hue),
        )
    return (
        lambda x: x * brightness,
        lambda x: tf.image.adjust_contrast(x, contrast),
        lambda x: tf.image.adjust_saturation(x, saturation),
        lambda x: tf.image.adjust_hue(x, hue),
    )


def _jitter(image, u, strength: float, compiled: bool = False) -> tf.Tensor:
    """Colour jitter given five uniforms: the brightness, contrast, saturation
    and hue draws, then the one that picks the order.

    `compiled` picks the form for XLA, on a planar (C, H, W) image: a loop over
    the four positions with a 4-way branch at each, so every op is compiled
    once (the 24-way branch that runs fastest op by op would compile each op
    24 times: 10 s instead of 0.4).
    """
    ops = [
        lambda x, op=op: tf.clip_by_value(op(x), 0.0, 1.0)
        for op in _jitter_ops(u[:4], strength, planar=compiled)
    ]
    index = tf.minimum(tf.cast(u[4] * len(_JITTER_ORDERS), tf.int32), len(_JITTER_ORDERS) - 1)
    if compiled:
        # A constant made here, not captured from outside: a tf.data function
        # that captures an eager tensor recompiles the XLA cluster on every call.
        order = tf.gather(tf.constant(_JITTER_ORDERS, tf.int32), index)

        def position(i, x):
            x = tf.switch_case(order[i], [lambda op=op: op(x) for op in ops])
            return i + 1, tf.ensure_shape(x, image.shape)

        return tf.while_loop(lambda i, _: i < 4, position, (tf.constant(0), image))[1]

    def in_order(order):
        def apply():
            x = image
            for op in order:
                x = ops[op](x)
            return x

        return apply

    image = tf.switch_case(index, [in_order(order) for order in _JITTER_ORDERS])
    image.set_shape([None, None, 3])
    return image


def color_jitter(image, seed, strength: float = 1.0) -> tf.Tensor:
    """Brightness, contrast, saturation (each 0.8 s) and hue (0.2 s) in a random
    order, clipped to [0, 1] after each."""
    if strength <= 0:
        return image
    return _jitter(image, tf.random.stateless_uniform([5], seed), strength)


# ITU-R 601 luma weights of R, G, B (those of tf.image.rgb_to_grayscale).
LUMA = (0.2989, 0.587, 0.114)


def to_grayscale(image) -> tf.Tensor:
    """Grayscale (ITU-R 601 luma, as tf.image.rgb_to_grayscale), in three channels."""
    # A (pixels, 3) x (3, 1) matmul: 1.4-2x faster at 224 px than a reduction
    # over the 3 channels (tf.image.rgb_to_grayscale).
    luma = tf.matmul(tf.reshape(image, [-1, 3]), tf.constant([[w] for w in LUMA]))
    shape = tf.shape(image)
    return tf.broadcast_to(tf.reshape(luma, tf.concat([shape[:-1], [1]], 0)), shape)


def _distort(image, u, strength: float, compiled: bool = False) -> tf.Tensor:
    """Colour distortion given seven uniforms: the jitter coin, the grayscale
    coin, then the five of `_jitter` (`compiled`: planar, see `_jitter`)."""
    if strength > 0:
        image = _maybe(u[0] < 0.8, lambda x: _jitter(x, u[2:7], strength, compiled), image)
    return _maybe(u[1] < 0.2, _grayscale_planar if compiled else to_grayscale, image)


def color_distortion(image, seed, strength: float = 1.0) -> tf.Tensor:
    """Colour jitter with p=0.8, then grayscale with p=0.2."""
    return _distort(image, tf.random.stateless_uniform([7], seed), strength)


# ------------------------------------------------------------------------ blur


def blur_kernel_size(side: int) -> int:
    """About 10% of the image side, odd."""
    return 2 * ((side // 10) // 2) + 1


# Taps farther than this many sigmas from the centre weigh less than exp(-8) of
# it (under 1e-4 of the kernel's mass in all) and are dropped: with sigma <= 2 a
# 23-tap kernel (10% of 224 px) then costs what its ~17 useful taps cost.
BLUR_TRUNCATE_SIGMAS = 4.0


def _along(image, axis: int, start, stop) -> tf.Tensor:
    return image[(slice(None),) * axis + (slice(start, stop),)]


def _blur_along(image, kernel, radius: int, axis: int) -> tf.Tensor:
    """One pass of the separable blur: weighted sums of shifted slices (under
    XLA, one fused loop), reflecting at the edge pixel as tf.pad's REFLECT
    (two slices and a concat: MirrorPad costs as much as a blur pass)."""
    low = tf.reverse(_along(image, axis, 1, radius + 1), [axis])
    high = tf.reverse(_along(image, axis, -radius - 1, -1), [axis])
    padded = tf.concat([low, image, high], axis)
    length = tf.shape(image)[axis]
    return tf.add_n(
        [kernel[i] * _along(padded, axis, i, i + length) for i in range(2 * radius + 1)]
    )


def _blur_with_radius(image, sigma, radius: int, axes) -> tf.Tensor:
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-tf.square(taps) / (2.0 * tf.square(sigma)))
    kernel = kernel / tf.reduce_sum(kernel)
    for axis in axes:
        image = _blur_along(image, kernel, radius, axis)
    return image


def gaussian_blur(
    image, sigma, kernel_size: int, largest_sigma: float | None = None, axes=(0, 1)
) -> tf.Tensor:
    """Separable Gaussian blur of an (H, W, C) image, reflecting at the borders.

    The kernel spans `kernel_size` taps, truncated to 4 sigma on each side
    (see `BLUR_TRUNCATE_SIGMAS`) and normalised to sum to 1. `largest_sigma`,
    when sigma is known to stay below it, bounds the radii compiled for;
    `axes` are the image's height and width axes ((1, 2) for a planar image).
    """
    max_radius = kernel_size // 2
    if largest_sigma is not None:
        max_radius = min(max_radius, math.ceil(BLUR_TRUNCATE_SIGMAS * largest_sigma))
    if max_radius == 0:
        return image
    image = tf.convert_to_tensor(image, tf.float32)
    sigma = tf.cast(sigma, tf.float32)
    needed = tf.cast(tf.math.ceil(BLUR_TRUNCATE_SIGMAS * sigma), tf.int32)
    radius_index = tf.clip_by_value(needed, 1, max_radius) - 1
    branches = [
        lambda radius=radius: _blur_with_radius(image, sigma, radius, axes)
        for radius in range(1, max_radius + 1)
    ]
    blurred = tf.switch_case(radius_index, branches)
    blurred.set_shape(image.shape)
    return blurred


def random_blur(image, seed, size: int, sigma_range=BLUR_SIGMA_RANGE) -> tf.Tensor:
    """Gaussian blur with p=0.5, sigma uniform in `sigma_range` drawn per image."""
    return _blur(image, tf.random.stateless_uniform([2], seed), size, sigma_range)


def _blur(image, u, size: int, sigma_range=BLUR_SIGMA_RANGE, axes=(0, 1)) -> tf.Tensor:
    """`random_blur` given two uniforms: the coin, then the sigma draw."""
    sigma = _between(u[1], *sigma_range)
    kernel_size = blur_kernel_size(size)
    return _maybe(
        u[0] < 0.5, lambda x: gaussian_blur(x, sigma, kernel_size, sigma_range[1], axes), image
    )


# ----------------------------------------------------------------------- views


def use_blur_for(image_size: int, use_blur: bool = True) -> bool:
    """Blur is on above 32 px (if asked for) and always off at 32 px or less."""
    return bool(use_blur) and image_size > 32


# Above this side, the steps after the crop run as one XLA-compiled function on
# planar views: fused, they cost about a quarter of TensorFlow's kernels run op
# by op (at 224 px the whole JPEG pipeline makes 1.45-1.65x the pairs/s; see
# README, "Input pipeline speed"); at 32 px the call costs more than it saves,
# so small views run op by op. The first call compiles (about 9 s at 224 px).
COMPILE_ABOVE = 32


def _finish_views(views, draws, image_size, strength, blur, flip, color_distort, compiled):
    """Flip, colour distortion and blur of each cropped view, given its ten
    uniforms (flip coin, 7 for the colour, 2 for the blur); stacked on channels."""
    finished = []
    width_axis = 2 if compiled else 1
    for view, u in zip(views, draws, strict=True):
        if compiled:
            view = tf.transpose(view, [2, 0, 1])  # planar: see _contrast_planar
        if flip:
            view = _maybe(u[0] < 0.5, lambda x: tf.reverse(x, [width_axis]), view)
        if color_distort:
            view = _distort(view, u[1:8], strength, compiled)
        if blur:
            view = _blur(view, u[8:10], image_size, axes=(1, 2) if compiled else (0, 1))
        view = tf.clip_by_value(view, 0.0, 1.0)
        finished.append(tf.transpose(view, [1, 2, 0]) if compiled else view)
    return tf.concat(finished, -1)  # one view: returned as it is


_finish_views_compiled = tf.function(_finish_views, jit_compile=True)


def _finish(views, seeds, image_size, color_jitter_strength, blur, flip, color_distort):
    for view in views:
        view.set_shape([image_size, image_size, 3])
    # The draws are made outside the compiled function, so the same seed gives
    # the same choices on either path (XLA has its own random number generators).
    draws = [tf.random.stateless_uniform([10], seed) for seed in seeds]
    compiled = image_size > COMPILE_ABOVE and (blur or color_distort)
    finish = _finish_views_compiled if compiled else _finish_views
    return finish(
        list(views),
        draws,
        int(image_size),
        float(color_jitter_strength),
        bool(blur),
        bool(flip),
        bool(color_distort),
        compiled,
    )


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
    return _finish(
        [view], [rest_seed], image_size, color_jitter_strength, blur, flip, color_distort
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
    return _finish(
        [view], [rest_seed], image_size, color_jitter_strength, blur, flip, color_distort
    )


def simclr_pair(
    image, seed, image_size: int, color_jitter_strength: float = 1.0, blur: bool = True
) -> tf.Tensor:
    """Two SimCLR views of `image` stacked on channels: (image_size, image_size, 6).

    View i is `simclr_view(image, seed_i)` with seed_1, seed_2 split from `seed`.
    """
    crop_seeds, rest = _pair_seeds(seed)
    views = [random_resized_crop(image, crop_seed, image_size) for crop_seed in crop_seeds]
    return _finish(views, rest, image_size, color_jitter_strength, blur, True, True)


def simclr_pair_jpeg(
    jpeg_bytes, seed, image_size: int, color_jitter_strength: float = 1.0, blur: bool = True
) -> tf.Tensor:
    """`simclr_pair` of encoded JPEG bytes, decoding once: only the smallest
    window that holds both crops (one entropy-decoding pass instead of two)."""
    crop_seeds, rest = _pair_seeds(seed)
    views = decode_and_random_crops(jpeg_bytes, crop_seeds, image_size)
    return _finish(views, rest, image_size, color_jitter_strength, blur, True, True)


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
    of their windows, once."""
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


def finetune_view(image, seed, image_size: int) -> tf.Tensor:
    """Fine-tuning augmentation: random resized crop and flip only."""
    return simclr_view(image, seed, image_size, blur=False, color_distort=False)


def eval_view(image, image_size: int) -> tf.Tensor:
    """Evaluation preprocessing: centre crop (above 32 px) and resize."""
    view = center_crop(image, image_size)
    view.set_shape([image_size, image_size, 3])
    return view
