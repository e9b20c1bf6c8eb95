"""What every data source gives: a `Source`, and `DataError` for the user's mistakes.

Examples are dicts with `label` (int64, -1 when unlabelled) and either
`image` (uint8 H x W x 3) or `encoded` (the file's bytes: JPEG, PNG, BMP or
GIF), which the pipeline decodes (JPEGs only inside the crop window), with the
file's `path` when it comes from a file of the user's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
