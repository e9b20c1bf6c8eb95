"""Which examples of a source are used: split slicing as in TFDS ("train[:10%]"),
label-subset files (the 1% / 10% ImageNet lists) and class-balanced fractions."""

from __future__ import annotations

import re

import numpy as np
from absl import logging

from simclr_tf2.data.source import DataError

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
