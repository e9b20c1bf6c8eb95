"""Where images come from: TFDS, an image folder, an .npz file, or the embedded default.

`load_source(dataset, split, data_dir)` picks the kind from `dataset` (the
`--dataset` flag) and returns a `Source` (see `simclr_tf2.data.source`): the
number of examples and classes, and a `tf.data.Dataset` of example dicts.

Every problem with the user's data raises `DataError` with a one-line message
naming the flag or file and what to do.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from simclr_tf2.data.files import (
    IMAGE_EXTENSIONS,
    VERIFY_MODES,
    DecodeFailures,
    list_images,
    verify_files,
)
from simclr_tf2.data.source import DataError, Source
from simclr_tf2.data.splits import (
    SplitError,
    fraction_rows,
    read_label_subset,
    require_ids,
    single_split_rows,
    slice_bounds,
    split_name,
)
from simclr_tf2.data.tfds import tfds_source

EMBEDDED_DEFAULT = "digits"

# DataError and Source are caught and typed by load_source's callers.
__all__ = [
    "EMBEDDED_DEFAULT",
    "VERIFY_MODES",
    "DataError",
    "Source",
    "array_source",
    "digits_source",
    "folder_source",
    "load_source",
    "npz_source",
    "tfds_source",
]


def load_source(
    dataset: str,
    split: str = "train",
    data_dir: str | None = None,
    skip_bad_images: bool = False,
    verify_images: str = "header",
    label_subset: str | None = None,
    split_flag: str = "--train_split",
    label_fraction: float = 0.0,
    seed: int = 0,
) -> Source:
    """The source named by `dataset`.

    Args:
        dataset: the embedded default ("digits"), a path ending in ".npz", a
            directory of images, or a TFDS name ("cifar10", "imagenet2012").
        split: "train" or "test" (TFDS: any split name), optionally sliced as
            in TFDS, e.g. "train[:10%]" or "train[1000:]".
        data_dir: where TFDS keeps prepared datasets.
        skip_bad_images: image folders: skip (and log) bad files instead of
            stopping.
        verify_images: image folders: "header" (fast, catches non-images and
            truncated files) or "decode" (decodes every file first).
        label_subset: a text file with one example id per line (the 1% / 10%
            ImageNet lists): TFDS `file_name`s, image file names in a folder, or
            row indices of an .npz file. Only those examples are used.
        split_flag: the flag named in the error when `split` does not work.
        label_fraction: .npz files, folders and the embedded default: keep a
            class-balanced random subset of this fraction (`balanced_subset`,
            drawn with `seed`); 0 keeps everything.
        seed: seed of that subset.
    """
    fraction = dict(fraction=label_fraction, seed=seed) if label_fraction else {}
    try:
        return _load_source(
            dataset, split, data_dir, skip_bad_images, verify_images, label_subset, fraction
        )
    except SplitError as error:
        raise DataError(f"{split_flag}={split}: {error}") from None


def _load_source(dataset, split, data_dir, skip_bad_images, verify_images, label_subset, fraction):
    subset = read_label_subset(label_subset) if label_subset else None
    if dataset == EMBEDDED_DEFAULT:
        return digits_source(split, subset, **fraction)
    if dataset.endswith(".npz"):
        return npz_source(dataset, split, subset, **fraction)
    if _looks_like_path(dataset):
        return folder_source(dataset, split, skip_bad_images, verify_images, subset, **fraction)
    if fraction:
        raise DataError(
            f"--label_fraction: not for TFDS datasets (--dataset={dataset}); use --train_split "
            "slicing (train[:10%]) or --label_subset with the 1%/10% lists."
        )
    return tfds_source(dataset, split, data_dir, subset)


def _looks_like_path(dataset: str) -> bool:
    # TFDS names have slashes too (imagenet2012_subset/10pct): a name is a folder
    # when it exists, is spelled as a path, or starts in a folder that exists.
    if os.path.isdir(dataset) or dataset.startswith(("/", ".", "~")):
        return True
    return os.sep in dataset and os.path.isdir(dataset.split(os.sep)[0])


# ---------------------------------------------------------------------- arrays


def array_source(
    name: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None,
    parts: dict[str, np.ndarray] | None,
    subset: list[str] | None = None,
    fraction: float = 0.0,
    seed: int = 0,
) -> Source:
    """A Source over in-memory arrays.

    `parts` maps split names to index arrays, sliced in their order as TFDS
    slices; `parts=None`: the arrays are one split, whatever its name, sliced
    class-stratified (`single_split_rows`). `subset` (ids from a label-subset
    file) are row numbers: of the arrays when they are one split, else of the
    split. `fraction` keeps a class-balanced subset drawn with `seed`.
    """
    if parts is None:
        index = single_split_rows(split, len(images), labels if num_classes else None)
    else:
        name_of_split = split_name(split)
        if name_of_split not in parts:
            raise SplitError(f"no such split in --dataset={name}; use one of {sorted(parts)}.")
        _, lo, hi = slice_bounds(split, len(parts[name_of_split]))
        index = parts[name_of_split][lo:hi]
    if subset is not None:
        try:
            rows = [int(i) for i in subset]
        except ValueError as error:
            raise DataError(
                f"--label_subset: ids for --dataset={name} must be row numbers; got {error}."
            ) from error
        if parts is None:
            require_ids([str(r) for r in rows], {str(r) for r in index}, split)
            index = index[np.isin(index, rows)]
        else:
            require_ids([str(r) for r in rows], {str(r) for r in range(len(index))}, split)
            index = index[rows]
    if fraction:
        index = index[fraction_rows(name, labels[index], fraction, seed)]
    images, labels = images[index], labels[index]

    def make():
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    return Source(name, split, len(index), num_classes, tuple(images.shape[1:]), make, index)


def digits_source(split: str = "train", subset: list[str] | None = None, **fraction) -> Source:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), as 32x32 RGB.

    Ships with scikit-learn, so it needs no download. Every fifth image is in
    "test" (360; also called "validation"), the others in "train" (1,437).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = digits.images.astype(np.float32)[..., None] / 16.0
    big = tf.image.resize(pixels, [32, 32], method="bilinear").numpy()
    images = np.round(np.clip(np.repeat(big, 3, axis=-1), 0, 1) * 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    index = np.arange(len(labels))
    test = index[index % 5 == 0]
    parts = {"train": index[index % 5 != 0], "test": test, "validation": test}
    return array_source(EMBEDDED_DEFAULT, split, images, labels, 10, parts, subset, **fraction)


def npz_source(
    path: str, split: str = "train", subset: list[str] | None = None, **fraction
) -> Source:
    """An .npz file with `images` (N, H, W, 3) uint8 and optional `labels` (N,) ints.

    The whole file is one split, whatever its name; a slice ("train[:90%]",
    "train[90%:]") is of a fixed class-stratified shuffle (`single_split_rows`).
    """
    if not os.path.isfile(path):
        raise DataError(f"--dataset={path}: no such file.")
    try:
        with np.load(path) as data:
            if "images" not in data:
                raise DataError(
                    f"{path}: has no 'images' array (found {sorted(data.files)}); "
                    "save images as np.savez(path, images=..., labels=...)."
                )
            images = data["images"]
            labels = data["labels"] if "labels" in data else None
    except (OSError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file ({error}).") from error
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{path}: 'images' must be uint8 of shape (N, H, W, 3); "
            f"got {images.dtype} of shape {images.shape}."
        )
    num_classes = None
    if labels is None:
        labels = np.full(len(images), -1, np.int64)
    else:
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{path}: 'labels' must be integers of shape ({len(images)},); "
                f"got {labels.dtype} of shape {labels.shape}."
            )
        if len(labels) and labels.min() < 0:
            raise DataError(f"{path}: 'labels' has negative values; use 0 .. C-1.")
        labels = labels.astype(np.int64)
        num_classes = int(labels.max()) + 1 if len(labels) else 0
    return array_source(path, split, images, labels, num_classes, None, subset, **fraction)


# ---------------------------------------------------------------- image folders


def folder_source(
    path: str,
    split: str = "train",
    skip_bad_images: bool = False,
    verify_images: str = "header",
    subset: list[str] | None = None,
    fraction: float = 0.0,
    seed: int = 0,
) -> Source:
    """A directory of images: one sub-folder per class (nested folders allowed
    inside a class), or a flat folder of unlabelled images for pretraining.

    The folder is one split, whatever its name: files in sorted order (class by
    class), or a slice ("train[:90%]", "train[90%:]") of a fixed class-stratified
    shuffle of them (`single_split_rows`). Every file is checked first (`check_image_file`;
    `verify_images="decode"` also decodes each one): a bad file stops with its
    path named, or with `skip_bad_images` is skipped and logged. So does a file
    that passes the check but fails when the pipeline decodes it.
    """
    if not os.path.isdir(path):
        raise DataError(f"--dataset={path}: no such directory.")
    entries = sorted(os.listdir(path))
    classes = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    top_images = [e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS)]
    if classes and top_images:
        raise DataError(
            f"--dataset={path}: has both images ({top_images[0]}, ...) and class folders "
            f"({classes[0]}, ...); put every image in a class folder, or use a flat folder."
        )
    files, labels, skipped = [], [], 0
    if classes:
        for label, name in enumerate(classes):
            found, ignored = list_images(os.path.join(path, name))
            files += found
            labels += [label] * len(found)
            skipped += ignored
        num_classes = len(classes)
    else:
        files, skipped = list_images(path)
        labels = [-1] * len(files)
        num_classes = None
    if skipped:
        logging.info(
            "%s: ignored %d files that are not images (%s).",
            path,
            skipped,
            "/".join(IMAGE_EXTENSIONS),
        )
    if not files:
        raise DataError(
            f"--dataset={path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})."
        )
    ids = single_split_rows(split, len(files), None if num_classes is None else labels)
    files, labels = [files[i] for i in ids], [labels[i] for i in ids]
    if subset is not None:
        names = [os.path.basename(f) for f in files]
        require_ids(subset, set(names), path)
        keep = set(subset)
        chosen = [i for i, name in enumerate(names) if name in keep]
        files, labels, ids = [files[i] for i in chosen], [labels[i] for i in chosen], ids[chosen]
    if fraction:
        rows = fraction_rows(path, None if num_classes is None else labels, fraction, seed)
        files, labels, ids = [files[i] for i in rows], [labels[i] for i in rows], ids[rows]
    good = verify_files(files, verify_images, skip_bad_images)
    files = [f for f, ok in zip(files, good, strict=True) if ok]
    labels = [label for label, ok in zip(labels, good, strict=True) if ok]
    ids = ids[np.asarray(good, bool)]
    if not files:
        raise DataError(f"--dataset={path}: every image file is bad (see the log).")

    def make():
        ds = tf.data.Dataset.from_tensor_slices(
            {"path": files, "label": np.asarray(labels, np.int64)}
        )

        def read(ex):
            encoded = tf.io.read_file(ex["path"])
            return {"encoded": encoded, "path": ex["path"], "label": ex["label"]}

        return ds.map(read, num_parallel_calls=tf.data.AUTOTUNE)

    failures = DecodeFailures(skip_bad_images)
    return Source(path, split, len(files), num_classes, None, make, ids, failures)
