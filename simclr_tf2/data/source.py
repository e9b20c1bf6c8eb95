"""What every data source gives: a `Source`, and `DataError` for the user's mistakes.

Examples are dicts with `label` (int64, -1 when unlabelled) and either
`image` (uint8 H x W x 3) or `encoded` (the file's bytes: JPEG, PNG, BMP or
GIF), which the pipeline decodes (JPEGs only inside the crop window), with the
file's `path` when it comes from a file of the user's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    from simclr_tf2.data.files import DecodeFailures


class DataError(ValueError):
    """The data a user named is missing or unusable; the message says how to fix it."""


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
        ids: which examples these are, as numbers in one numbering of every example
            of the dataset (all its splits), so that two sources of the same data share
            an image exactly when they share an id (`shared_examples`); None when
            not known.
        decode_failures: where the pipeline reports an example whose file
            (`path`) cannot be decoded: it is named, and stops the run or is
            skipped as the user chose; one for every dataset made from the source,
            so each file is logged and counted once.
    """

    name: str
    split: str
    num_examples: int
    num_classes: int | None
    image_shape: tuple[int, int, int] | None
    make_dataset: Callable[[], tf.data.Dataset]
    ids: np.ndarray | None = field(default=None, compare=False, repr=False)
    decode_failures: DecodeFailures | None = None

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


def same_data(a: str, b: str) -> bool:
    """Whether two --dataset values name the same data (paths compared as files)."""
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return a == b


def shared_examples(a: Source, b: Source) -> int:
    """How many examples sources `a` and `b` have in common: 0 for different data;
    by their `ids` when both have them, else all of them for the same split."""
    if not same_data(a.name, b.name):
        return 0
    if a.ids is None or b.ids is None:
        same_split = a.split.replace(" ", "") == b.split.replace(" ", "")
        return min(a.num_examples, b.num_examples) if same_split else 0
    return int(np.intersect1d(a.ids, b.ids).size)
