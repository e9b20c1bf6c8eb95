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
