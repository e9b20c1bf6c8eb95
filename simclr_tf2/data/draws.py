"""Random draws of the augmentations: seeds, uniforms taken by name, coins.

Every random choice is a stateless function of a shape-[2] integer seed. A
step's uniforms are drawn in one op and handed out as named fields (see
`JitterDraws`, `BlurDraws`, `ViewDraws`): in a tf.data map each op call (a
draw, a split) costs more than the arithmetic on a 32x32 image.

This module imports nothing else from the package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import tensorflow as tf


def split_seed(seed, n: int) -> list[tf.Tensor]:
    """`n` independent seeds derived from `seed`."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def uniforms(seed, n: int) -> Iterator[tf.Tensor]:
    """`n` uniform [0, 1) scalars drawn from `seed` in one op, to be taken in order
    (each draws class's `take` consumes its own fields)."""
    return iter(tf.unstack(tf.random.stateless_uniform([n], seed)))


def between(u, low: float, high: float) -> tf.Tensor:
    """Maps a uniform [0, 1) draw onto [low, high)."""
    return low + (high - low) * u


def maybe(coin, fn: Callable[[tf.Tensor], tf.Tensor], image) -> tf.Tensor:
    """fn(image) where `coin` is true, else image.

    A branch (tf.cond) rather than computing both sides and selecting, which
    measured slower even at 32 px.
    """
    result = tf.cond(coin, lambda: fn(image), lambda: image)
    result.set_shape(image.shape)
    return result
