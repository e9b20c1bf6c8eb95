"""TFDS datasets that are already prepared on disk (a run never downloads)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from simclr_tf2.data.source import DataError, Source
from simclr_tf2.data.splits import SplitError, slice_bounds


def tfds_source(
    name: str, split: str = "train", data_dir: str | None = None, subset: list[str] | None = None
) -> Source:
    """A TFDS dataset that is already prepared in `data_dir` (never downloads).

    Args:
        name: the TFDS name ("cifar10", "imagenet2012").
        split: any split of the dataset, sliced as TFDS slices ("train[:10%]").
        data_dir: where TFDS keeps prepared datasets.
        subset: `file_name`s of the only examples to use (a label-subset file).
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as error:
        # load_source tried the other kinds first: the message names them all.
        raise DataError(
            f"--dataset={name}: not the embedded default ('digits'), an .npz file, "
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
        raise SplitError(
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

    return Source(name, split, num_examples, num_classes, None, make, _ids(builder, split))


def _ids(builder, split: str) -> np.ndarray | None:
    """The examples `split` selects, numbered over all splits (in sorted order) as
    `Source.ids`; None for splits beyond "name" / "name[a:b]" ("train+test")."""
    splits = builder.info.splits
    try:
        name, lo, hi = slice_bounds(split, splits[split.split("[")[0].strip()].num_examples)
    except (SplitError, KeyError, ValueError):
        return None
    names = sorted(splits.keys())
    offset = sum(splits[n].num_examples for n in names[: names.index(name)])
    return np.arange(offset + lo, offset + hi)
