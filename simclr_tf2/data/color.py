"""Colour distortion: SimCLR's colour jitter (p=0.8) and grayscale (p=0.2).

Each function takes a shape-[2] seed, or the draws already made from one
(`JitterDraws`, `ColorDraws`; the view pipeline draws everything of a view in
one op and passes them down). `planar=True` takes a (C, H, W) image and is
the form the view pipeline compiles with XLA: each op is then a few
elementwise passes over contiguous planes, which XLA vectorises (on (H, W, 3)
the per-pixel max/min over 3 channels is not). Both forms give what
tf.image's ops give, to float rounding (tests/test_color.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import NamedTuple

import tensorflow as tf

from simclr_tf2.data.draws import between, maybe, uniforms

# ITU-R 601 luma weights of R, G, B (those of tf.image.rgb_to_grayscale).
LUMA = (0.2989, 0.587, 0.114)

# The 24 orders of the four jitter ops, chosen with one uniform (one branch
# per view instead of one per position).
JITTER_ORDERS = tuple(itertools.permutations(range(4)))


class JitterDraws(NamedTuple):
    """The uniform [0, 1) draws of one colour jitter."""

    brightness: tf.Tensor
    contrast: tf.Tensor
    saturation: tf.Tensor
    hue: tf.Tensor
    order: tf.Tensor  # picks one of JITTER_ORDERS

    SIZE = 5

    @classmethod
    def take(cls, values: Iterator[tf.Tensor]) -> JitterDraws:
        return cls(*(next(values) for _ in range(cls.SIZE)))

    @classmethod
    def from_seed(cls, seed) -> JitterDraws:
        return cls.take(uniforms(seed, cls.SIZE))


class ColorDraws(NamedTuple):
    """The uniform [0, 1) draws of one colour distortion."""

    jitter_coin: tf.Tensor
    grayscale_coin: tf.Tensor
    jitter: JitterDraws

    SIZE = 2 + JitterDraws.SIZE

    @classmethod
    def take(cls, values: Iterator[tf.Tensor]) -> ColorDraws:
        return cls(next(values), next(values), JitterDraws.take(values))

    @classmethod
    def from_seed(cls, seed) -> ColorDraws:
        return cls.take(uniforms(seed, cls.SIZE))


# ------------------------------------------------------------- planar (C, H, W)
# What tf.image's ops give on (H, W, C), to float rounding.


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


# ----------------------------------------------------------------------- jitter


def _jitter_ops(draws: JitterDraws, strength: float, planar: bool):
    """The four jitter ops (brightness, contrast, saturation, hue), each clipped
    to [0, 1]."""
    delta = 0.8 * strength  # of brightness, contrast and saturation
    low, high = max(1.0 - delta, 0.0), 1.0 + delta
    h = min(0.2 * strength, 0.5)
    # Brightness is multiplicative, as in SimCLR v2's code.
    brightness = between(draws.brightness, low, high)
    contrast = between(draws.contrast, low, high)
    saturation = between(draws.saturation, low, high)
    hue = between(draws.hue, -h, h)
    if planar:
        ops = (
            lambda x: x * brightness,
            lambda x: _contrast_planar(x, contrast),
            lambda x: _saturation_planar(x, saturation),
            lambda x: _hue_planar(x, hue),
        )
    else:
        ops = (
            lambda x: x * brightness,
            lambda x: tf.image.adjust_contrast(x, contrast),
            lambda x: tf.image.adjust_saturation(x, saturation),
            lambda x: tf.image.adjust_hue(x, hue),
        )
    return [lambda x, op=op: tf.clip_by_value(op(x), 0.0, 1.0) for op in ops]


def color_jitter(image, seed, strength: float = 1.0, planar: bool = False) -> tf.Tensor:
    """Brightness, contrast, saturation (each 0.8 s) and hue (0.2 s) in a random
    order, clipped to [0, 1] after each.

    Args:
        image: float32 (H, W, 3) in [0, 1], or (3, H, W) with `planar`.
        seed: shape-[2] integer seed, or the `JitterDraws` drawn from one.
        strength: s; 0 returns the image unchanged.
        planar: a (C, H, W) image, in the form for XLA: a loop over the four
            positions with a 4-way branch at each, so every op is compiled
            once (the 24-way branch that runs fastest op by op would compile
            each op 24 times: 10 s instead of 0.4).
    """
    if strength <= 0:
        return image
    draws = seed if isinstance(seed, JitterDraws) else JitterDraws.from_seed(seed)
    ops = _jitter_ops(draws, strength, planar)
    index = tf.minimum(tf.cast(draws.order * len(JITTER_ORDERS), tf.int32), len(JITTER_ORDERS) - 1)
    if planar:
        # A constant made here, not captured from outside: a tf.data function
        # that captures an eager tensor recompiles the XLA cluster on every call.
        order = tf.gather(tf.constant(JITTER_ORDERS, tf.int32), index)

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

    image = tf.switch_case(index, [in_order(order) for order in JITTER_ORDERS])
    image.set_shape([None, None, 3])
    return image


# -------------------------------------------------------------------- grayscale


def to_grayscale(image, planar: bool = False) -> tf.Tensor:
    """Grayscale (ITU-R 601 luma, as tf.image.rgb_to_grayscale), in three channels
    ((C, H, W) with `planar`)."""
    if planar:
        luma = LUMA[0] * image[0] + LUMA[1] * image[1] + LUMA[2] * image[2]
        return tf.broadcast_to(luma, tf.shape(image))
    # A (pixels, 3) x (3, 1) matmul: 1.4-2x faster at 224 px than a reduction
    # over the 3 channels (tf.image.rgb_to_grayscale).
    luma = tf.matmul(tf.reshape(image, [-1, 3]), tf.constant([[w] for w in LUMA]))
    shape = tf.shape(image)
    return tf.broadcast_to(tf.reshape(luma, tf.concat([shape[:-1], [1]], 0)), shape)


def color_distortion(image, seed, strength: float = 1.0, planar: bool = False) -> tf.Tensor:
    """Colour jitter with p=0.8, then grayscale with p=0.2.

    Args:
        image: float32 (H, W, 3) in [0, 1], or (3, H, W) with `planar`.
        seed: shape-[2] integer seed, or the `ColorDraws` drawn from one.
        strength: s of the jitter (0: grayscale only).
        planar: see `color_jitter`.
    """
    draws = seed if isinstance(seed, ColorDraws) else ColorDraws.from_seed(seed)
    if strength > 0:
        image = maybe(
            draws.jitter_coin < 0.8,
            lambda x: color_jitter(x, draws.jitter, strength, planar),
            image,
        )
    return maybe(draws.grayscale_coin < 0.2, lambda x: to_grayscale(x, planar), image)
