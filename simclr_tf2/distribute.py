"""Strategies from plain arguments, and logical CPU devices for testing."""

from __future__ import annotations

import tensorflow as tf


def configure_logical_cpus(count: int) -> list[str]:
    """Splits the CPU into `count` logical devices and returns their names.

    Must run before TensorFlow initialises its devices (before the first op),
    so call it first thing in a process.
    """
    if count < 1:
        raise ValueError(f"num_logical_cpus={count} must be >= 1.")
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"Cannot split the CPU into {count} devices: TensorFlow has already "
            "initialised its devices in this process; do it before any TF op."
        ) from error
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def cpu_strategy(num_replicas: int) -> tf.distribute.Strategy:
    """MirroredStrategy over `num_replicas` logical CPUs (the default strategy for 1)."""
    if num_replicas == 1:
        return tf.distribute.get_strategy()
    devices = configure_logical_cpus(num_replicas)
    return tf.distribute.MirroredStrategy(devices)
