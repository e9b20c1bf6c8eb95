"""Which examples of a source are used: split slicing as in TFDS ("train[:10%]"),
held-out slices of a source that is one split (a folder, an .npz file), label-subset
files (the 1% / 10% ImageNet lists) and class-balanced fractions; and the check that
evaluation data is held out from the training data."""

from __future__ import annotations

import re

import numpy as np
from absl import logging

from simclr_tf2.data.source import DataError, Source, shared_examples

_SLICE = re.compile(r"^(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?$")


class SplitError(DataError):
    """A split name that does not work; `load_source` prefixes the flag that gave it."""


def split_name(split: str) -> str:
    """The name of a split without its slice: "train" of "train[:10%]"."""
    match = _SLICE.match(split.replace(" ", ""))
    if not match:
        raise SplitError("not a split like 'train' or 'train[:10%]'.")
    return match.group(1)


def slice_bounds(split: str, n: int) -> tuple[str, int, int]:
    """Parses "name[a:b]" / "name[a%:b%]" into (name, start, stop) over n examples."""
    match = _SLICE.match(split.replace(" ", ""))
    if not match:
        raise SplitError("not a split like 'train' or 'train[:10%]'.")
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
        raise SplitError(f"selects no examples out of {n}.")
    return name, lo, hi


# The order a source that is one split is sliced in depends on its examples only: the
# same on every run and host, and under any NumPy version (RandomState's stream is
# frozen, NEP 19; a Generator's may change between versions).
SPLIT_SEED = 0


def stratified_order(labels, n: int, seed: int = SPLIT_SEED) -> np.ndarray:
    """A fixed shuffle of n examples in which every class is spread evenly.

    The examples of each class, shuffled, take evenly spaced places from the start
    (the first) to the end (the last) of the order; ties are broken at random. So any
    slice holds each class in proportion to its size (to about one image), and the
    first C and the last C examples (C classes) hold one of every class that has two
    images or more: `[:x]` and `[x:]` both hold every class when each is at least C
    long. Unlabelled examples (`labels` None or -1) get a plain shuffle.

    Args:
        labels: (n,) class ids, or None.
        n: the number of examples.
        seed: seed of the shuffle.

    Returns:
        A permutation of range(n).
    """
    rng = np.random.RandomState(seed)
    if labels is None or not len(labels) or np.min(labels) < 0:
        return rng.permutation(n)
    labels = np.asarray(labels)
    place = np.zeros(n)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) > 1:
            place[members] = np.arange(len(members)) / (len(members) - 1)
    return np.lexsort((rng.random_sample(n), place))


def single_split_rows(split: str, n: int, labels=None) -> np.ndarray:
    """The rows `split` selects of a source that is one split (a folder, an .npz file).

    The split's name is not looked at. Unsliced ("train"): every row, in order.
    Sliced ("train[:90%]", "train[1000:]"): that slice, counted as TFDS counts, of
    `stratified_order(labels, n)`, so complementary slices ("train[:90%]" and
    "train[90%:]") are disjoint, together the whole source, class-stratified, and
    the same on every run and host.
    """
    _, lo, hi = slice_bounds(split, n)
    if (lo, hi) == (0, n):
        return np.arange(n)
    return stratified_order(labels, n)[lo:hi]


def require_held_out(train: Source, evaluated: Source, purpose: str = "the evaluation") -> None:
    """Raises DataError when `evaluated` shares images with `train`, the training data.

    Args:
        train: the training data (--dataset, --train_split).
        evaluated: the data evaluated on (--eval_dataset or --dataset, --eval_split).
        purpose: what would score the training images, for the message.
    """
    shared = shared_examples(train, evaluated)
    if not shared:
        return
    match = _SLICE.match(train.split.replace(" ", ""))
    name = match.group(1) if match else "train"
    which = "all" if shared == evaluated.num_examples else f"{shared}"
    raise DataError(
        f"--eval_split={evaluated.split}: {which} of its {evaluated.num_examples} images are "
        f"training images (--dataset={train.name} --train_split={train.split}), so {purpose} "
        f"would score images the model trained on; hold some out with --train_split={name}[:90%] "
        f"--eval_split={name}[90%:], or evaluate on other data with --eval_dataset."
    )


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


def require_ids(wanted: list[str], found: set[str], where: str) -> None:
    """Raises DataError naming the label-subset ids that are not in `found`."""
    missing = [i for i in wanted if i not in found]
    if missing:
        raise DataError(
            f"--label_subset: {len(missing)} of {len(wanted)} ids are not in {where} "
            f"(e.g. {missing[0]!r})."
        )


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


def fraction_rows(name: str, labels, fraction: float, seed: int) -> np.ndarray:
    """`balanced_subset` of a source's labels (None: unlabelled), logged."""
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
