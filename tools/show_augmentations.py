"""Writes a PNG grid: each row an original image, then several pairs of SimCLR views.

Usage:
  python tools/show_augmentations.py --dataset=digits --out=views.png
  python tools/show_augmentations.py --dataset=/path/to/images --image_size=224 \
      --color_jitter_strength=1.0 --rows=6 --pairs=3

Any source that run.py accepts works (--dataset: the embedded default, an .npz
file, an image folder or a prepared TFDS name). Views use exactly the training
pipeline's augmentation, seeded by --seed.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN CPU kernels (off by default on CPUs without AVX-512 VNNI): see simclr_tf2/__init__.py.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_tf2.data.blur import use_blur_for  # noqa: E402
from simclr_tf2.data.pipeline import pixels  # noqa: E402
from simclr_tf2.data.sources import DataError, load_source  # noqa: E402
from simclr_tf2.data.views import eval_view, simclr_view  # noqa: E402

GAP = 4  # pixels between tiles


def grid(originals: list[np.ndarray], views: list[list[np.ndarray]], size: int) -> np.ndarray:
    """Rows of [original | view1 view2 | view1 view2 | ...] on a white canvas."""
    pairs = len(views[0]) // 2
    columns = 1 + 2 * pairs
    width = columns * size + (columns - 1) * GAP + pairs * GAP  # extra gap between pairs
    height = len(originals) * size + (len(originals) - 1) * GAP
    canvas = np.ones((height, width, 3), np.float32)
    for r, (original, row) in enumerate(zip(originals, views, strict=True)):
        y = r * (size + GAP)
        x = 0
        for c, tile in enumerate([original, *row]):
            canvas[y : y + size, x : x + size] = tile
            x += size + GAP + (GAP if c % 2 == 0 else 0)
    return canvas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--split", default="train")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--image_size", type=int, default=None, help="default: the source's")
    parser.add_argument("--color_jitter_strength", type=float, default=1.0)
    parser.add_argument("--use_blur", type=int, default=1, help="1/0; never at <= 32 px")
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="augmentations.png")
    args = parser.parse_args()

    try:
        source = load_source(args.dataset, args.split, args.data_dir, split_flag="--split")
    except DataError as error:
        print(f"show_augmentations: {error}", file=sys.stderr)
        return 2
    size = args.image_size or (source.image_shape[0] if source.image_shape else 224)
    blur = use_blur_for(size, bool(args.use_blur))
    originals, views = [], []
    for i, example in enumerate(source.dataset().take(args.rows)):
        image = pixels(example)
        originals.append(eval_view(image, size).numpy())
        row = []
        for v in range(2 * args.pairs):
            seed = tf.constant([args.seed * 1_000_003 + i, v], tf.int64)
            row.append(
                simclr_view(image, seed, size, args.color_jitter_strength, blur=blur).numpy()
            )
        views.append(row)
    canvas = grid(originals, views, size)
    png = tf.io.encode_png(tf.image.convert_image_dtype(canvas, tf.uint8, saturate=True))
    tf.io.write_file(args.out, png)
    print(f"Wrote {args.out}: {len(originals)} images, {args.pairs} view pairs each, {size} px.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
