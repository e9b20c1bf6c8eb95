"""Seeded streams for the augmentation tests: every draw is a function of its seed."""

import numpy as np
import tensorflow as tf


def seeds(n, offset=0):
    return tf.data.Dataset.range(offset, offset + n).map(
        lambda i: tf.stack([tf.cast(i, tf.int32), tf.constant(7, tf.int32)])
    )


def collect(dataset):
    return np.stack(list(dataset.as_numpy_iterator()))


def colourful_image():
    # Random colours: never gray, and every op visibly changes it.
    return (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)


def many_views(image, n, **kwargs):
    """`n` SimCLR views of `image`, one per seed of `seeds(n)`."""
    from simclr_tf2.data.views import simclr_view

    image = tf.constant(image)
    ds = seeds(n).map(
        lambda s: simclr_view(image, s, **kwargs), num_parallel_calls=tf.data.AUTOTUNE
    )
    return collect(ds)


def is_gray(views):
    return np.all(views[..., 0] == views[..., 1], axis=(1, 2)) & np.all(
        views[..., 1] == views[..., 2], axis=(1, 2)
    )


def changed(views, original):
    return np.abs(views - original[None]).max(axis=(1, 2, 3)) > 1e-4
