"""Benchmark of the SimCLR training input pipeline (pairs of views per second).

Two cases, as in the project's performance bar:
  * 32 px views from uint8 arrays (CIFAR-10's train.npz when ../shared/data is
    there, else random arrays of the same shape), blur off as at 32 px;
  * 32 px views from small JPEG files (the first --jpegs images of the same
    arrays, quality 90, written to a temporary folder), blur off;
  * 224 px views from JPEG files of 400x350 px (about 46 KB each, written to a
    temporary folder), with the per-image Gaussian blur on.

Usage: python tools/benchmark_input.py [--seconds 20] [--batch 256] [--breakdown]
--breakdown also times parts of the 224 px pipeline (JPEG bytes in memory):
decoding each crop window vs their union, decode + resize, the steps after the
crop op by op vs compiled, the pair without blur, the whole pair.
The last line printed is one JSON object with pairs_per_s_32, pairs_per_s_32_jpeg,
pairs_per_s_224,
cores, the fp32 matmul peak measured in the same run, and both rates scaled to
the 290 GFLOP/s peak at which the project's reference figures were taken.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf2.data.crop import (  # noqa: E402
    decode_and_random_crops,
    jpeg_crop_windows,
    union_window,
)
from simclr_tf2.data.pipeline import build_dataset  # noqa: E402
from simclr_tf2.data.sources import folder_source, npz_source  # noqa: E402
from simclr_tf2.data.views import ViewDraws, finish_views, pair_seeds, simclr_pair_jpeg  # noqa: E402
from tools.hardware import REFERENCE_PEAK_GFLOPS, cores, matmul_peak_gflops  # noqa: E402

CIFAR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cifar10", "train.npz"
)


def pairs_per_second(dataset: tf.data.Dataset, seconds: float, warmup_batches: int = 5) -> float:
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    pairs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pairs += int(next(iterator)[1].shape[0])
    return pairs / (time.perf_counter() - start)


def array_source(tmp: str):
    if os.path.isfile(CIFAR):
        return npz_source(CIFAR), "CIFAR-10 train.npz"
    path = os.path.join(tmp, "random.npz")
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8))
    return npz_source(path), "random uint8 arrays"


def write_small_jpegs(folder: str, source, count: int) -> None:
    """The first `count` images of an array source as JPEG files (quality 90)."""
    os.makedirs(folder, exist_ok=True)
    for i, example in enumerate(source.dataset().take(count)):
        data = tf.io.encode_jpeg(example["image"], quality=90).numpy()
        Path(folder, f"{i:05d}.jpg").write_bytes(data)


def write_jpegs(folder: str, count: int) -> float:
    """Photo-like 400x350 JPEGs (smooth upscaled content plus grain), ~46 KB each."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    sizes = []
    for i in range(count):
        small = rng.random((12, 14, 3)).astype(np.float32)
        image = tf.image.resize(small, [350, 400], method="bicubic").numpy()
        image = image + rng.normal(0, 0.05, image.shape)
        pixels = np.clip(image * 255, 0, 255).astype(np.uint8)
        data = tf.io.encode_jpeg(pixels, quality=85).numpy()
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
            f.write(data)
        sizes.append(len(data))
    return float(np.mean(sizes))


def _rate_of(fn, data, seconds: float, batch: int) -> float:
    """Pairs/s of fn(jpeg_bytes, seed) mapped over `data` in a batched tf.data pipeline."""
    ds = tf.data.Dataset.from_tensor_slices(data).repeat().enumerate()
    ds = ds.map(
        lambda i, jpeg: fn(jpeg, tf.stack([tf.constant(0, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    return pairs_per_second(
        ds.batch(batch).prefetch(tf.data.AUTOTUNE).map(lambda x: (x, x)), seconds, 2
    )


def breakdown(folder: str, seconds: float, batch: int, size: int = 224) -> dict[str, float]:
    """CPU milliseconds per pair of parts of the 224 px pipeline (cores x 1000 / pairs/s)."""
    data = [Path(folder, name).read_bytes() for name in sorted(os.listdir(folder))]

    def windows(jpeg, seed):
        return jpeg_crop_windows(jpeg, pair_seeds(seed)[0])

    def token(images):  # a scalar per pair: batching costs nothing
        return tf.add_n([tf.cast(tf.reduce_sum(image[:1, :1]), tf.float32) for image in images])

    crops = [tf.random.stateless_uniform([size, size, 3], [0, i]) for i in range(2)]

    def after_crop(compiled):
        def fn(_, seed):
            draws = [ViewDraws.from_seed(s) for s in pair_seeds(seed)[1]]
            return finish_views(crops, draws, size, compiled=compiled)

        return fn

    stages = {
        "decode each crop window": lambda j, s: token(
            [tf.image.decode_and_crop_jpeg(j, w, channels=3) for w in tf.unstack(windows(j, s))]
        ),
        "decode the union of both windows": lambda j, s: token(
            [tf.image.decode_and_crop_jpeg(j, union_window(windows(j, s)), channels=3)]
        ),
        "decode + bicubic resize of both": lambda j, s: token(
            decode_and_random_crops(j, pair_seeds(s)[0], size)
        ),
        "after the crop, op by op (in-memory crops)": after_crop(False),
        "after the crop, compiled (in-memory crops)": after_crop(True),
        "whole pair without blur": lambda j, s: simclr_pair_jpeg(j, s, size, blur=False),
        "whole pair": lambda j, s: simclr_pair_jpeg(j, s, size),
    }
    result = {}
    for name, fn in stages.items():
        result[name] = round(cores() * 1000 / _rate_of(fn, data, seconds, batch), 2)
        print(f"  {name:45s} {result[name]:6.2f} ms per pair ({cores()} cores busy)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per case")
    parser.add_argument("--batch", type=int, default=256, help="batch size (pairs)")
    parser.add_argument("--jpegs", type=int, default=1000, help="JPEG files to write")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time parts of the 224 px pipeline"
    )
    args = parser.parse_args()

    peak_before = matmul_peak_gflops()
    with tempfile.TemporaryDirectory() as tmp:
        source, what = array_source(tmp)
        ds32 = build_dataset(source, args.batch, 32, "pretrain", color_jitter_strength=0.5)
        rate32 = pairs_per_second(ds32, args.seconds)
        print(f"32 px from {what}, blur off:      {rate32:8.0f} pairs/s")

        small = os.path.join(tmp, "small_jpegs")
        write_small_jpegs(small, source, args.jpegs)
        ds32j = build_dataset(
            folder_source(small), args.batch, 32, "pretrain", color_jitter_strength=0.5
        )
        rate32j = pairs_per_second(ds32j, args.seconds)
        print(f"32 px from {args.jpegs} JPEG files of {what}, blur off: {rate32j:8.0f} pairs/s")

        folder = os.path.join(tmp, "jpegs")
        mean_bytes = write_jpegs(folder, args.jpegs)
        ds224 = build_dataset(folder_source(folder), args.batch, 224, "pretrain", use_blur=True)
        rate224 = pairs_per_second(ds224, args.seconds, warmup_batches=2)
        print(
            f"224 px from 400x350 JPEG files ({mean_bytes / 1000:.0f} KB), blur on: "
            f"{rate224:8.0f} pairs/s"
        )
        parts = breakdown(folder, args.seconds, args.batch) if args.breakdown else None
    # The peak is taken before and after; the mean stands for the run.
    peak = (peak_before + matmul_peak_gflops()) / 2
    scale = REFERENCE_PEAK_GFLOPS / peak
    print(f"cores: {cores()}, fp32 matmul peak: {peak:.0f} GFLOP/s (before {peak_before:.0f})")
    print(
        f"scaled to a {REFERENCE_PEAK_GFLOPS:.0f} GFLOP/s host: 32 px {rate32 * scale:.0f}, "
        f"224 px {rate224 * scale:.0f} pairs/s"
    )
    print(
        json.dumps(
            {
                "pairs_per_s_32": round(rate32, 1),
                "pairs_per_s_32_jpeg": round(rate32j, 1),
                "pairs_per_s_224": round(rate224, 1),
                "cores": cores(),
                "matmul_gflops": round(peak, 1),
                "pairs_per_s_32_at_290": round(rate32 * scale, 1),
                "pairs_per_s_224_at_290": round(rate224 * scale, 1),
                "jpeg_kb": round(mean_bytes / 1000, 1),
                **({"breakdown_224_ms_per_pair": parts} if parts else {}),
            }
        )
    )


if __name__ == "__main__":
    main()
