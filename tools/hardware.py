"""What this machine can do: the peaks benchmark figures are measured against.

The host's speed drifts 20-30% between hours, so every benchmark measures its
yardsticks in the same run: TensorFlow's matmul peak and a representative
convolution's peak, each in the dtype the measured step computes in
(bfloat16 is several times faster than float32 on CPUs with AMX or
AVX512-BF16, and slower than float32 where it is emulated). Figures are also
reported scaled to the 290 GFLOP/s fp32 matmul peak at which the project's
reference figures were taken. `cpu_features` and `onednn_kernels` name what
the CPU offers and which oneDNN kernels TensorFlow dispatches to.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import tensorflow as tf

from simclr_tf2.precision import read_cpu_flags

REFERENCE_PEAK_GFLOPS = 290.0

# /proc/cpuinfo flags that decide the speed of the train step's dtypes, by the name
# vendors give them.
CPU_FEATURES = {
    "amx_bf16": "AMX-BF16",
    "amx_fp16": "AMX-FP16",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "avx512f": "AVX-512",
    "avx2": "AVX2",
    "fma": "FMA",
    "f16c": "F16C",
}

# The representative convolution: a 3x3 of ResNet-18's first block group at 32 px,
# batch 256, 64 -> 64 channels, forward.
CONV_SHAPE = dict(batch=256, size=32, channels=64)


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def cpu_features() -> list[str]:
    """The features of `CPU_FEATURES` this CPU has ("AVX2", "AMX-BF16", ...)."""
    flags = read_cpu_flags()
    return [name for flag, name in CPU_FEATURES.items() if flag in flags]


def _best_gflops(step, args, flops: float, seconds: float) -> float:
    step(*args).numpy()  # trace and warm up
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        step(*args).numpy()
        best = max(best, flops / (time.perf_counter() - t) / 1e9)
    return best


def matmul_peak_gflops(n: int = 2048, seconds: float = 3.0, dtype: str = "float32") -> float:
    """Best rate of TensorFlow's n x n matmul in `dtype` on this machine, in GFLOP/s."""
    a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], seed=[3, 4]), dtype)

    @tf.function
    def step(a, b):
        return tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32))

    return _best_gflops(step, (a, b), 2 * n**3, seconds)


def conv_peak_gflops(
    batch: int = 256, size: int = 32, channels: int = 64, seconds: float = 3.0, dtype="float32"
) -> float:
    """Best rate of TensorFlow's 3x3 convolution (stride 1, same padding, NHWC,
    `channels` -> `channels`) forward on a batch of `batch` size x size inputs in
    `dtype`, in GFLOP/s (2 x its multiply-adds per second)."""
    x = tf.cast(tf.random.stateless_normal([batch, size, size, channels], seed=[1, 2]), dtype)
    w = tf.cast(0.05 * tf.random.stateless_normal([3, 3, channels, channels], seed=[3, 4]), dtype)

    @tf.function
    def step(x, w):
        return tf.reduce_sum(tf.cast(tf.nn.conv2d(x, w, 1, "SAME"), tf.float32))

    return _best_gflops(step, (x, w), 2 * batch * size * size * channels * channels * 9, seconds)


# A convolution forward and backward and a matmul in one dtype (argv[1]): what the
# train step runs, small.
_PROBE = """
import sys
import tensorflow as tf
dtype = sys.argv[1]
x = tf.cast(tf.random.normal([8, 16, 16, 64]), dtype)
w = tf.cast(tf.random.normal([3, 3, 64, 64]), dtype)
with tf.GradientTape() as tape:
    tape.watch([x, w])
    y = tf.nn.conv2d(x, w, 1, "SAME")
grads = tape.gradient(y, [x, w])
z = tf.matmul(tf.reshape(x, [-1, 64]), w[0, 0])
print(float(tf.reduce_sum(tf.cast(z, tf.float32))), [float(tf.reduce_sum(g)) for g in grads])
"""

_KINDS = ("convolution", "matmul", "inner_product", "gemm_api")


def parse_onednn_verbose(stdout: str, stderr: str = "") -> dict:
    """The ISA oneDNN dispatches to and its kernels, from a run's ONEDNN_VERBOSE=1
    output: {"isa": "Intel AVX2", "kernels": ["convolution brg_conv_fwd:avx2 f32",
    ...], "notes": [TensorFlow's messages on falling back from oneDNN]}."""
    isa, kernels = None, []
    for line in stdout.splitlines():
        if not line.startswith("onednn_verbose"):
            continue
        fields = line.split(",")
        if "isa:" in line and "info" in fields:
            isa = line.split("isa:", 1)[1].strip()
        elif "exec" in fields:
            at = fields.index("exec")
            kind, impl = fields[at + 2], fields[at + 3] or "-"
            if kind in _KINDS:
                src = re.search(r"src[:_]([a-z0-9]+)", line)
                kernel = f"{kind} {impl} {src.group(1) if src else '?'}"
                if kernel not in kernels:
                    kernels.append(kernel)
    notes = []
    for line in stderr.splitlines():
        if "oneDNN" in line and "alling back" in line:
            note = line.split("] ", 1)[-1].strip()
            if note not in notes:
                notes.append(note)
    return {"isa": isa, "kernels": kernels, "notes": notes}


def onednn_kernels(dtype: str = "float32") -> dict:
    """What oneDNN does for a convolution (forward and backward) and a matmul in
    `dtype`, from a small run of them in a subprocess with ONEDNN_VERBOSE=1:
    `parse_onednn_verbose`'s fields, and "onednn_opts", the TF_ENABLE_ONEDNN_OPTS
    this process passes on (None: TensorFlow's own choice by CPU)."""
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, dtype], env=env, capture_output=True, text=True, timeout=600
    )
    found = parse_onednn_verbose(proc.stdout, proc.stderr)
    if proc.returncode:
        found["notes"].append(f"the probe failed: {proc.stderr.strip()[-300:]}")
    return {"onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), **found}
