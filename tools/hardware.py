"""What this machine can do: the fp32 matmul peak that benchmark figures are scaled by.

The host's speed drifts 20-30% between hours, so every benchmark measures this
peak in the same run and reports its figures also scaled to the 290 GFLOP/s at
which the project's reference figures were taken.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf

REFERENCE_PEAK_GFLOPS = 290.0


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def matmul_peak_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """Best fp32 matmul rate of TensorFlow on this machine, in GFLOP/s."""
    a = tf.random.stateless_normal([n, n], seed=[1, 2])
    b = tf.random.stateless_normal([n, n], seed=[3, 4])

    @tf.function
    def step(a, b):
        return tf.reduce_sum(tf.matmul(a, b))

    step(a, b).numpy()  # trace and warm up
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        step(a, b).numpy()
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best
