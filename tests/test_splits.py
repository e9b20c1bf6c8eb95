"""Split slicing, label-subset files and class-balanced fractions."""

import numpy as np
import pytest

from simclr_tf2.data.sources import DataError, load_source
from simclr_tf2.data.splits import SplitError, balanced_subset, read_label_subset, slice_bounds
from tests.images import rgb, save


def test_folder_slicing(tmp_path):
    for i in range(10):
        save(str(tmp_path / f"{i:02d}.png"), rgb(8, 8, seed=i))
    assert load_source(str(tmp_path), "train[:30%]").num_examples == 3
    assert load_source(str(tmp_path), "train[2:5]").num_examples == 3
    with pytest.raises(DataError, match="selects no examples"):
        load_source(str(tmp_path), "train[5:5]")


def test_bad_split_syntax():
    with pytest.raises(DataError, match=r"^--train_split=train\[::2\]: not a split"):
        load_source("digits", "train[::2]")


def test_label_fraction_subsets_are_balanced_sized_and_seeded():
    # Imbalanced labels: 500 of class 0, 300 of class 1, 200 of class 2.
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    rows = balanced_subset(labels, 0.1, seed=7)
    assert len(rows) == 99  # 10% of 1000 over 3 classes: 33 each
    assert np.bincount(labels[rows]).tolist() == [33, 33, 33]
    assert len(set(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, balanced_subset(labels, 0.1, seed=7))
    assert not np.array_equal(rows, balanced_subset(labels, 0.1, seed=8))
    # A class smaller than its share gives all it has; 1% still keeps one per class.
    assert np.bincount(labels[balanced_subset(labels, 0.9, 0)]).tolist() == [300, 300, 200]
    assert np.bincount(labels[balanced_subset(labels, 0.001, 0)]).tolist() == [1, 1, 1]
    with pytest.raises(DataError, match=r"--label_fraction=1.5: must be in \(0, 1\]"):
        balanced_subset(labels, 1.5)


def test_slice_bounds_as_tfds_slices():
    assert slice_bounds("train", 50) == ("train", 0, 50)
    assert slice_bounds("train[:10%]", 50) == ("train", 0, 5)
    assert slice_bounds("test[10:]", 50) == ("test", 10, 50)
    assert slice_bounds("train[-10:]", 50) == ("train", 40, 50)
    assert slice_bounds("train[ 90% : ]", 50) == ("train", 45, 50)
    assert slice_bounds("train[:1000]", 50) == ("train", 0, 50)  # clamped
    with pytest.raises(SplitError, match="not a split"):
        slice_bounds("train[1:2:3]", 50)
    with pytest.raises(SplitError, match="selects no examples out of 50"):
        slice_bounds("train[60:]", 50)


def test_read_label_subset(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# comment\nb.jpg\n\na.jpg\nb.jpg\n")
    assert read_label_subset(str(path)) == ["b.jpg", "a.jpg"]  # in order, once each
    path.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="lists no example ids"):
        read_label_subset(str(path))
