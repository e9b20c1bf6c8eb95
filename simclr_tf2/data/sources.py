"""Where images come from: TFDS, an image folder, an .npz file, or the embedded default.

`load_source(dataset, split, data_dir)` picks the kind from `dataset` (the
`--dataset` flag) and returns a `Source`: the number of examples and classes,
and a `tf.data.Dataset` of dicts with `label` (int64, -1 when unlabelled) and
either `image` (uint8 H x W x 3) or `encoded` (the file's bytes: JPEG, PNG, BMP
or GIF), which the pipeline decodes (JPEGs only inside the crop window).

Every problem with the user's data raises `DataError` with a one-line message
naming the flag or file and what to do.
"""

from __future__ import annotations

import os
import re
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from absl import logging

EMBEDDED_DEFAULT = "digits"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
VERIFY_MODES = ("header", "decode")
_SLICE = re.compile(r"^(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?$")


class DataError(ValueError):
    """The data a user named is missing or unusable; the message says how to fix it."""


class _SplitError(DataError):
    """A split name that does not work; `load_source` prefixes the flag that gave it."""


@dataclass(frozen=True)
class Source:
    """A dataset split with its size.

    Attributes:
        name: what the user passed as --dataset.
        split: the split (with any slicing) that was loaded.
        num_examples: number of examples in the split.
        num_classes: number of classes, or None for unlabelled data.
        image_shape: (H, W, 3) when every image has that shape, else None.
        make_dataset: builds the `tf.data.Dataset` of example dicts.
    """

    name: str
    split: str
    num_examples: int
    num_classes: int | None
    image_shape: tuple[int, int, int] | None
    make_dataset: Callable[[], tf.data.Dataset]

    def dataset(self) -> tf.data.Dataset:
        return self.make_dataset()

    def require_classes(self, purpose: str) -> None:
        """Raises DataError unless the source has labels of at least two classes."""
        if self.num_classes is None:
            raise DataError(
                f"--dataset={self.name}: has no labels, and {purpose} needs them "
                "(an image folder needs one sub-folder per class)."
            )
        if self.num_classes < 2:
            raise DataError(
                f"--dataset={self.name}: has {self.num_classes} class, and {purpose} "
                "needs at least 2."
            )


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
    except _SplitError as error:
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


def balanced_subset(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted row indices of a class-balanced random subset with `fraction` of the rows.

    Every class contributes the same number of rows, round(fraction * N / classes)
    (at least 1, at most what the class has), drawn without replacement; the same
    seed gives the same subset.
    """
    if not 0 < fraction <= 1:
        raise DataError(f"--label_fraction={fraction}: must be in (0, 1].")
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = max(1, round(fraction * len(labels) / len(classes)))
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        rows.append(rng.choice(members, min(per_class, len(members)), replace=False))
    return np.sort(np.concatenate(rows))


def _fraction_rows(name, labels, fraction, seed):
    if labels is None or (len(labels) and np.min(labels) < 0):
        raise DataError(f"--label_fraction: --dataset={name} has no labels to balance by.")
    rows = balanced_subset(labels, fraction, seed)
    logging.info(
        "--label_fraction=%g: %d of %d examples, %d per class (seed %d).",
        fraction,
        len(rows),
        len(labels),
        max(1, round(fraction * len(labels) / len(np.unique(labels)))),
        seed,
    )
    return rows


def read_label_subset(path: str) -> list[str]:
    """The ids in a label-subset file: one per line; blank lines and # comments skipped."""
    try:
        with open(path) as f:
            ids = [line.strip() for line in f]
    except OSError as error:
        raise DataError(f"--label_subset={path}: cannot be read ({error.strerror}).") from error
    ids = list(dict.fromkeys(i for i in ids if i and not i.startswith("#")))
    if not ids:
        raise DataError(f"--label_subset={path}: lists no example ids.")
    return ids


def _missing_ids(wanted: list[str], found: set[str], where: str) -> None:
    missing = [i for i in wanted if i not in found]
    if missing:
        raise DataError(
            f"--label_subset: {len(missing)} of {len(wanted)} ids are not in {where} "
            f"(e.g. {missing[0]!r})."
        )


# ----------------------------------------------------------------- slicing


def _slice_bounds(split: str, n: int) -> tuple[str, int, int]:
    """Parses "name[a:b]" / "name[a%:b%]" into (name, start, stop) over n examples."""
    match = _SLICE.match(split.replace(" ", ""))
    if not match:
        raise _SplitError("not a split like 'train' or 'train[:10%]'.")
    name, start, start_pct, stop, stop_pct = match.groups()

    def bound(value, pct, default):
        if value in (None, ""):
            return default
        value = int(value)
        if pct:
            value = int(round(value * n / 100))
        return value + n if value < 0 else value

    lo, hi = bound(start, start_pct, 0), bound(stop, stop_pct, n)
    lo, hi = max(0, min(lo, n)), max(0, min(hi, n))
    if hi <= lo:
        raise _SplitError(f"selects no examples out of {n}.")
    return name, lo, hi


def _array_source(
    name, split, images, labels, num_classes, parts, subset=None, fraction=0.0, seed=0
) -> Source:
    """A Source over in-memory arrays; `parts` maps split names to index arrays.

    `subset` (ids from a label-subset file) are row indices into the split.
    """
    match = _SLICE.match(split.replace(" ", ""))
    if not match:
        _slice_bounds(split, 0)  # raises the syntax error
    if match.group(1) not in parts:
        raise _SplitError(f"no such split in --dataset={name}; use one of {sorted(parts)}.")
    _, lo, hi = _slice_bounds(split, len(parts[match.group(1)]))
    index = parts[match.group(1)][lo:hi]
    if subset is not None:
        try:
            rows = [int(i) for i in subset]
        except ValueError as error:
            raise DataError(
                f"--label_subset: ids for --dataset={name} must be row numbers; got {error}."
            ) from error
        _missing_ids([str(r) for r in rows], {str(r) for r in range(len(index))}, split)
        index = index[rows]
    if fraction:
        index = index[_fraction_rows(name, labels[index], fraction, seed)]
    images, labels = images[index], labels[index]

    def make():
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})

    return Source(name, split, len(index), num_classes, tuple(images.shape[1:]), make)


# ------------------------------------------------------------ embedded default


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
    return _array_source(EMBEDDED_DEFAULT, split, images, labels, 10, parts, subset, **fraction)


# ------------------------------------------------------------------------ npz


def npz_source(
    path: str, split: str = "train", subset: list[str] | None = None, **fraction
) -> Source:
    """An .npz file with `images` (N, H, W, 3) uint8 and optional `labels` (N,) ints.

    The whole file is one split, which can be sliced ("train[:10%]").
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
    # The file is a single split, whatever its name.
    match = _SLICE.match(split.replace(" ", ""))
    parts = {match.group(1) if match else split: np.arange(len(images))}
    return _array_source(path, split, images, labels, num_classes, parts, subset, **fraction)


# --------------------------------------------------------------- image folders


def _list_images(root: str) -> tuple[list[str], int]:
    files, skipped = [], 0
    for directory, subdirs, names in os.walk(root):
        subdirs.sort()
        for name in sorted(names):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(directory, name))
            elif not name.startswith("."):
                skipped += 1
    return files, skipped


def check_image_file(path: str, decode: bool = False) -> str | None:
    """Why `path` is not a usable image, or None if it is.

    The default check reads only the first and last bytes: the signature of a
    JPEG, PNG, GIF or BMP and its end marker (so truncated files are caught).
    With `decode`, the file is also fully decoded.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if head.startswith(b"\xff\xd8\xff"):
        if b"\xff\xd9" not in tail:
            return "truncated JPEG (no end-of-image marker)"
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in tail:
            return "truncated PNG (no IEND chunk)"
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        if b"\x3b" not in tail[-16:]:
            return "truncated GIF (no trailer)"
    elif head.startswith(b"BM") and len(head) >= 6:
        if struct.unpack("<I", head[2:6])[0] > size:
            return "truncated BMP (shorter than its header says)"
    else:
        return f"not a JPEG, PNG, GIF or BMP file (starts with {head[:8]!r})"
    if decode:
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
            return f"cannot be decoded ({error.message.splitlines()[0]})"
    return None


def _verify_files(files: list[str], verify: str, skip_bad_images: bool) -> list[bool]:
    """Checks every file; stops on a bad one unless `skip_bad_images`."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify_images={verify!r} is not one of {VERIFY_MODES}.")
    start, last_log = time.time(), time.time()
    problems = []
    with ThreadPoolExecutor(max_workers=16) as pool:
        for i, problem in enumerate(
            pool.map(lambda f: check_image_file(f, verify == "decode"), files)
        ):
            problems.append(problem)
            if time.time() - last_log > 10:
                last_log = time.time()
                logging.info("Checked %d of %d image files...", i + 1, len(files))
    bad = [(f, p) for f, p in zip(files, problems, strict=True) if p]
    logging.info(
        "Checked %d image files (%s) in %.1fs: %d bad.",
        len(files),
        verify,
        time.time() - start,
        len(bad),
    )
    if bad and not skip_bad_images:
        listed = "; ".join(f"{f}: {p}" for f, p in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise DataError(
            f"{len(bad)} bad image file(s): {listed}{more}. Fix or remove them, or pass "
            "--skip_bad_images to skip them."
        )
    for f, p in bad:
        logging.warning("Skipping bad image %s: %s", f, p)
    if bad:
        logging.warning("Skipped %d bad image files of %d.", len(bad), len(files))
    return [p is None for p in problems]


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

    The folder is one split, which can be sliced ("train[:10%]"); files are
    listed in sorted order. Every file is checked first (`check_image_file`;
    `verify_images="decode"` also decodes each one): a bad file stops with its
    path named, or with `skip_bad_images` is skipped and logged.
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
            found, ignored = _list_images(os.path.join(path, name))
            files += found
            labels += [label] * len(found)
            skipped += ignored
        num_classes = len(classes)
    else:
        files, skipped = _list_images(path)
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
    # The folder is a single split, whatever its name.
    _, lo, hi = _slice_bounds(split, len(files))
    files, labels = files[lo:hi], labels[lo:hi]
    if subset is not None:
        names = [os.path.basename(f) for f in files]
        _missing_ids(subset, set(names), path)
        keep = set(subset)
        chosen = [i for i, name in enumerate(names) if name in keep]
        files, labels = [files[i] for i in chosen], [labels[i] for i in chosen]
    if fraction:
        rows = _fraction_rows(path, None if num_classes is None else labels, fraction, seed)
        files, labels = [files[i] for i in rows], [labels[i] for i in rows]
    good = _verify_files(files, verify_images, skip_bad_images)
    files = [f for f, ok in zip(files, good, strict=True) if ok]
    labels = [label for label, ok in zip(labels, good, strict=True) if ok]
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

    return Source(path, split, len(files), num_classes, None, make)


# ------------------------------------------------------------------------ TFDS


def tfds_source(
    name: str, split: str = "train", data_dir: str | None = None, subset: list[str] | None = None
) -> Source:
    """A TFDS dataset that is already prepared in `data_dir` (never downloads)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        raise DataError(
            f"--dataset={name}: not the embedded default ({EMBEDDED_DEFAULT!r}), an .npz file, "
            "an existing directory, or a TFDS dataset name."
        ) from error
    # Decided by the files in data_dir: on a host with network, TFDS fills `info.splits`
    # from metadata it fetches, for a dataset that is not on disk at all.
    if not builder.is_prepared():
        raise DataError(
            f"--dataset={name}: TFDS has no prepared copy in {builder.data_dir} and this run "
            f"does not download; prepare it where there is network (`tfds build {name} "
            "--data_dir=DIR`), copy DIR here and pass --data_dir=DIR, or use an .npz file "
            "or an image folder."
        )
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as error:
        raise _SplitError(
            f"no such split in TFDS dataset {name}; use one of {sorted(builder.info.splits)} "
            "(slices such as train[:10%] work)."
        ) from error
    label = builder.info.features["label"] if "label" in builder.info.features else None
    num_classes = label.num_classes if label is not None else None
    if subset is not None:
        if "file_name" not in builder.info.features:
            raise DataError(
                f"--label_subset: TFDS dataset {name} has no file_name feature to select by."
            )
        # The ImageNet subset lists name files of the split; they are all present.
        num_examples = len(subset)

    def make():
        ds = builder.as_dataset(
            split=split, decoders={"image": tfds.decode.SkipDecoding()}, shuffle_files=False
        )
        if subset is not None:
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(subset), tf.ones(len(subset), tf.bool)
                ),
                default_value=False,
            )
            ds = ds.filter(lambda ex: table.lookup(ex["file_name"]))

        def select(ex):
            if label is None:
                return {"encoded": ex["image"], "label": tf.constant(-1, tf.int64)}
            return {"encoded": ex["image"], "label": tf.cast(ex["label"], tf.int64)}

        return ds.map(select)

    return Source(name, split, num_examples, num_classes, None, make)
