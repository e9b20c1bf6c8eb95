"""Split slicing, held-out slices, label-subset files and class-balanced fractions."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from simclr_tf2.data.source import shared_examples
from simclr_tf2.data.sources import DataError, load_source
from simclr_tf2.data.splits import (
    SPLIT_SEED,
    SplitError,
    balanced_subset,
    read_label_subset,
    require_held_out,
    single_split_rows,
    slice_bounds,
    stratified_order,
)
from tests.images import rgb, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def _classes_folder(root, classes=5, per_class=7):
    for c in range(classes):
        for i in range(per_class):
            save(str(root / f"class_{c}" / f"{i:02d}.png"), rgb(8, 8, seed=10 * c + i))
    return str(root)


def _files(source):
    return [ex["path"].numpy().decode() for ex in source.dataset()]


@pytest.mark.parametrize("head, tail", [("train[:80%]", "train[80%:]"), ("x[:28]", "y[-7:]")])
def test_folder_held_out_slices_are_disjoint_cover_it_and_hold_every_class(tmp_path, head, tail):
    folder = _classes_folder(tmp_path / "images")
    everything = set(_files(load_source(folder, "train")))
    train, held_out = load_source(folder, head), load_source(folder, tail)
    train_files, held_out_files = set(_files(train)), set(_files(held_out))
    assert len(train_files) == train.num_examples == 28 and held_out.num_examples == 7
    assert not train_files & held_out_files and train_files | held_out_files == everything
    # Every class on both sides; the held-out part is not the last classes of the file list.
    for files in (train_files, held_out_files):
        assert {os.path.basename(os.path.dirname(f)) for f in files} == {
            f"class_{c}" for c in range(5)
        }
    assert shared_examples(train, held_out) == 0
    assert shared_examples(train, load_source(folder, "validation")) == 28


def test_stratified_order_spreads_every_class_and_keeps_proportions():
    labels = np.repeat([0, 1, 2], [1000, 100, 2])  # imbalanced, one class of two images
    order = stratified_order(labels, len(labels))
    assert sorted(order) == list(range(len(labels)))
    # Each class's share of any tenth is its share of the whole, to one image.
    for lo in range(0, len(labels) - 110, 110):
        counts = np.bincount(labels[order[lo : lo + 110]], minlength=3)
        assert abs(counts[0] - 100) <= 1 and abs(counts[1] - 10) <= 1, counts
    # The first and the last 3 examples hold one image of every class.
    assert sorted(labels[order[:3]]) == sorted(labels[order[-3:]]) == [0, 1, 2]
    np.testing.assert_array_equal(order, stratified_order(labels, len(labels)))
    assert not np.array_equal(order, stratified_order(labels, len(labels), seed=1))


def test_unlabelled_folder_slices_are_a_seeded_shuffle(tmp_path):
    for i in range(20):
        save(str(tmp_path / f"{i:02d}.png"), rgb(8, 8, seed=i))
    first, rest = (
        load_source(str(tmp_path), "train[:50%]"),
        load_source(str(tmp_path), "train[50%:]"),
    )
    first_files, rest_files = _files(first), _files(rest)
    assert len(first_files) == len(rest_files) == 10 and not set(first_files) & set(rest_files)
    names = sorted(os.path.basename(f) for f in first_files)
    assert names != [f"{i:02d}.png" for i in range(10)]  # not the first half of the listing
    assert _files(load_source(str(tmp_path), "train[:50%]")) == first_files
    np.testing.assert_array_equal(
        single_split_rows("train[:50%]", 20), np.random.RandomState(SPLIT_SEED).permutation(20)[:10]
    )


_ORDER = """
import hashlib, sys
from simclr_tf2.data.sources import load_source
files = [ex["path"].numpy() for ex in load_source(sys.argv[1], sys.argv[2]).dataset()]
print(hashlib.sha256(b"|".join(files)).hexdigest())
"""


def test_folder_slices_are_the_same_in_another_process(tmp_path):
    folder = _classes_folder(tmp_path / "images")
    # Another process, with another string-hash seed than this one's (random).
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT, "PYTHONHASHSEED": "1"}
    other = subprocess.run(
        [sys.executable, "-c", _ORDER, folder, "train[80%:]"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=True,
    ).stdout.split()[-1]  # fmt: skip

    def digest(split):
        files = [ex["path"].numpy() for ex in load_source(folder, split).dataset()]
        return hashlib.sha256(b"|".join(files)).hexdigest()

    assert other == digest("train[80%:]") != digest("train[:80%]")


def test_npz_slices_are_stratified_and_label_subsets_name_file_rows(tmp_path):
    path = str(tmp_path / "data.npz")
    labels = np.repeat(np.arange(4), 10)  # class-sorted, as a folder's listing
    np.savez(path, images=np.zeros((40, 8, 8, 3), np.uint8), labels=labels)
    train, held_out = load_source(path, "train[:75%]"), load_source(path, "train[75%:]")
    assert sorted(np.concatenate([train.ids, held_out.ids]).tolist()) == list(range(40))
    for source in (train, held_out):
        seen = np.concatenate([ex["label"].numpy()[None] for ex in source.dataset()])
        np.testing.assert_array_equal(seen, labels[source.ids])
        assert set(seen) == {0, 1, 2, 3}
    # --label_subset lists rows of the file, also of a sliced split.
    rows = [str(r) for r in held_out.ids[[1, 4, 6]]]
    subset = tmp_path / "rows.txt"
    subset.write_text("\n".join(rows))
    chosen = load_source(path, "train[75%:]", label_subset=str(subset))
    assert sorted(chosen.ids.tolist()) == sorted(int(r) for r in rows)


def test_evaluating_on_training_images_is_refused(tmp_path):
    folder = _classes_folder(tmp_path / "images")
    with pytest.raises(DataError) as error:
        require_held_out(load_source(folder, "train"), load_source(folder, "validation"))
    assert str(error.value) == (
        f"--eval_split=validation: all of its 35 images are training images (--dataset={folder} "
        "--train_split=train), so the evaluation would score images the model trained on; hold "
        "some out with --train_split=train[:90%] --eval_split=train[90%:], or evaluate on other "
        "data with --eval_dataset."
    )
    with pytest.raises(DataError, match=r"^--eval_split=train\[60%:\]: 2 of its 14 images"):
        require_held_out(load_source(folder, "train[:65%]"), load_source(folder, "train[60%:]"))
    # The same folder named another way is the same data.
    with pytest.raises(DataError, match="all of its 35 images"):
        require_held_out(load_source(folder, "train"), load_source(folder + "/.", "train"))
    require_held_out(load_source(folder, "train[:90%]"), load_source(folder, "train[90%:]"))
    require_held_out(load_source("digits", "train"), load_source("digits", "test"))
    with pytest.raises(DataError, match="all of its 360 images are training images"):
        require_held_out(load_source("digits", "test"), load_source("digits", "validation"))
