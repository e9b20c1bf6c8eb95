"""Embeddings: an encoder's features of every image of a source, prepared as for
evaluation, and the images most similar to a query by cosine similarity.

Images are prepared by `simclr_tf2.data.views.eval_view` (centre crop and
bicubic resize), the function the evaluation pipeline and the export's
`serving_bytes` / `serving_uint8` signatures use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from simclr_tf2.data.pipeline import decode_image, pixels
from simclr_tf2.data.source import DataError, Source
from simclr_tf2.data.views import eval_view


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Features of a source's images, in the source's order.

    Attributes:
        features: (N, D) float32, the encoder's `final_avg_pool` (h).
        index: (N,) int64, each image's position in the source.
        labels: (N,) int64, or None when the source has no labels.
        paths: (N,) file paths of an image folder's images, else None.
        projections: (N, P) float32 `proj_head_output` (z) when asked for, else None.
    """

    features: np.ndarray
    index: np.ndarray
    labels: np.ndarray | None
    paths: np.ndarray | None
    projections: np.ndarray | None


def eval_batches(source: Source, image_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of {"images", "index", "label"} (+ "path" for a folder's files), every
    example of `source` once in its order, prepared by `eval_view`."""

    def prepare(index, example):
        prepared = {
            "images": eval_view(pixels(example), image_size),
            "index": index,
            "label": example["label"],
        }
        if "path" in example:
            prepared["path"] = example["path"]
        return prepared

    ds = source.dataset().enumerate()
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def embed_source(
    encoder: Callable[[tf.Tensor], dict],
    source: Source,
    image_size: int,
    batch_size: int = 256,
    projections: bool = False,
    progress: Callable[[int], None] | None = None,
) -> Embeddings:
    """The `Embeddings` of every image of `source`.

    Args:
        encoder: images float32 (B, S, S, 3) in [0, 1] -> dict with `final_avg_pool`
            (and `proj_head_output` for `projections`), e.g. a
            `simclr_tf2.checkpoints.Encoder`.
        source: the images.
        image_size: side S the images are prepared to.
        batch_size: images per call of `encoder`.
        projections: keep `proj_head_output` too.
        progress: called after each batch with the number of images done.
    """
    parts: dict[str, list[np.ndarray]] = {"features": [], "index": [], "labels": []}
    paths, projected, done = [], [], 0
    for batch in eval_batches(source, image_size, batch_size):
        outputs = encoder(batch["images"])
        parts["features"].append(np.asarray(outputs["final_avg_pool"], np.float32))
        parts["index"].append(batch["index"].numpy())
        parts["labels"].append(batch["label"].numpy())
        if projections:
            projected.append(np.asarray(outputs["proj_head_output"], np.float32))
        if "path" in batch:
            paths += [p.decode() for p in batch["path"].numpy()]
        done += len(parts["index"][-1])
        if progress is not None:
            progress(done)
    if not done:
        raise DataError(f"--dataset={source.name}: no images in split {source.split}.")
    joined = {key: np.concatenate(values) for key, values in parts.items()}
    return Embeddings(
        features=joined["features"],
        index=joined["index"].astype(np.int64),
        labels=None if source.num_classes is None else joined["labels"].astype(np.int64),
        paths=np.asarray(paths) if paths else None,
        projections=np.concatenate(projected) if projections else None,
    )


def prepare_file(path: str, image_size: int) -> tf.Tensor:
    """The (image_size, image_size, 3) float32 view of an image file (JPEG, PNG,
    BMP, GIF) as evaluation prepares it."""
    return eval_view(decode_image(tf.io.read_file(path)), image_size)


def most_similar(features, query, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosine similarities) of the `k` rows of `features` (N, D) most
    similar to `query` (D,), most similar first (at most N)."""
    bank = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1)
    q = tf.math.l2_normalize(tf.reshape(tf.cast(query, tf.float32), [1, -1]), axis=1)
    similarity = tf.matmul(q, bank, transpose_b=True)[0]
    values, indices = tf.math.top_k(similarity, min(k, int(bank.shape[0])))
    return indices.numpy(), values.numpy()
