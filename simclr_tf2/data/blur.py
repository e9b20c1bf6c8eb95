"""Gaussian blur: SimCLR's per-image blur (p=0.5, sigma uniform in [0.1, 2.0]),
with a kernel of about 10% of the image side; off at 32 px or less."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import tensorflow as tf

from simclr_tf2.data.draws import between, maybe, uniforms

BLUR_SIGMA_RANGE = (0.1, 2.0)

# Taps farther than this many sigmas from the centre weigh less than exp(-8) of
# it (under 1e-4 of the kernel's mass in all) and are dropped: with sigma <= 2 a
# 23-tap kernel (10% of 224 px) then costs what its ~17 useful taps cost.
BLUR_TRUNCATE_SIGMAS = 4.0


class BlurDraws(NamedTuple):
    """The uniform [0, 1) draws of one random blur."""

    coin: tf.Tensor
    sigma: tf.Tensor  # mapped onto the sigma range

    SIZE = 2

    @classmethod
    def take(cls, values: Iterator[tf.Tensor]) -> BlurDraws:
        return cls(next(values), next(values))

    @classmethod
    def from_seed(cls, seed) -> BlurDraws:
        return cls.take(uniforms(seed, cls.SIZE))


def use_blur_for(image_size: int, use_blur: bool = True) -> bool:
    """Blur is on above 32 px (if asked for) and always off at 32 px or less."""
    return bool(use_blur) and image_size > 32


def blur_kernel_size(side: int) -> int:
    """About 10% of the image side, odd."""
    return 2 * ((side // 10) // 2) + 1


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


def random_blur(
    image, seed, size: int, sigma_range=BLUR_SIGMA_RANGE, planar: bool = False
) -> tf.Tensor:
    """Gaussian blur with p=0.5, sigma uniform in `sigma_range` drawn per image.

    Args:
        image: float32 (H, W, C), or (C, H, W) with `planar`.
        seed: shape-[2] integer seed, or the `BlurDraws` drawn from one.
        size: the image side the kernel is sized for (`blur_kernel_size`).
        sigma_range: (low, high) of sigma, in pixels.
        planar: a (C, H, W) image.
    """
    draws = seed if isinstance(seed, BlurDraws) else BlurDraws.from_seed(seed)
    sigma = between(draws.sigma, *sigma_range)
    kernel_size = blur_kernel_size(size)
    axes = (1, 2) if planar else (0, 1)
    return maybe(
        draws.coin < 0.5,
        lambda x: gaussian_blur(x, sigma, kernel_size, sigma_range[1], axes),
        image,
    )
